"""What a kind of target means to every stage of gptclf: the :class:`Task` record.

A model family (:mod:`gptclf.models.family`) says how a backbone is built and loaded; a
task says what the head's outputs mean: how a label cell is read, the training targets and
the loss, the probabilities, what is calibrated on the validation split, the metrics and
the score that picks the epoch, and the shape of a prediction (Python, files, HTTP, ONNX,
Hugging Face). Training, evaluation, prediction, serving and export ask the run's task
instead of branching on its kind, so a new kind of target is one new file in this folder
and one entry in :data:`gptclf.tasks.TASKS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ..data.tables import DEFAULT_LABEL_DELIMITER, Example, LabelReader


class Tally(ABC):
    """Loss and score accumulated batch by batch over a split (the book's ``calc_loss_loader`` and
    ``calc_accuracy_loader`` in one pass)."""

    @abstractmethod
    def add(self, idx: Sequence[int], logits: torch.Tensor, targets: torch.Tensor) -> None: ...

    @abstractmethod
    def result(self) -> tuple[float, float, torch.Tensor | None]:
        """(mean loss, score, which examples were right, or None where "right" has no meaning)."""


class Task(ABC):
    """One kind of target. Instances are stateless; what a run fitted (a temperature, thresholds)
    lives in its config.json and is passed in."""

    name: ClassVar[str]              # config.json "task" and --task
    score_name: ClassVar[str]        # the per-epoch score the loop logs and keeps the best epoch by
    hf_problem_type: ClassVar[str]   # transformers' config.json "problem_type"
    schema_name: ClassVar[str] = ""  # prefix of its HTTP schemas' names (MultiLabelPrediction)
    can_undersample: ClassVar[bool] = True  # --balance undersample has a meaning

    # ------------------------------------------------------------------ options and data

    def check_options(self, balance: str) -> None:
        """Refuse resolved options this task cannot use (a GptclfError naming the option)."""

    def default_balance(self, book_default: str) -> str:
        """``--balance`` left out: ``book_default`` (the book's undersampling for its SMS data,
        every row of anyone else's) where undersampling has a meaning."""
        return book_default if self.can_undersample else "none"

    @abstractmethod
    def label_reader(self, delimiter: str = DEFAULT_LABEL_DELIMITER) -> LabelReader | None:
        """How a label cell reads (None: the data layer's one-label rule)."""

    def check_examples(self, examples: list[Example], source: str) -> None:
        """Refuse data whose labels this task cannot train on."""

    def split_notes(self, parts: dict[str, list[Example]]) -> dict[str, Any]:
        """More entries for the data summary of config.json (``data``)."""
        return {}

    def count_note(self, part: list[Example]) -> list[str]:
        """More items for a split's line of class counts (what ``gptclf train`` prints)."""
        return []

    @staticmethod
    def in_config(d: dict[str, Any]) -> bool:
        """Whether a config.json without a ``task`` key is a run of this task (earlier spellings)."""
        return False

    @staticmethod
    def check_config(d: dict[str, Any], labels: list[str], where: str) -> None:
        """Check this task's own keys of any config.json (a GptclfError naming the key)."""

    def config_markers(self) -> dict[str, Any]:
        """Keys config.json carries besides ``task`` for this task."""
        return {}

    @abstractmethod
    def targets(self, examples: Sequence[Example], index: dict[str, int]) -> Any:
        """The training targets of ``examples`` (a class index each, or a 0/1 row)."""

    @abstractmethod
    def gold(self, example: Example) -> Any:
        """What :meth:`evaluate` takes as one example's truth."""

    # ------------------------------------------------------------------ training

    @abstractmethod
    def balance_weights(self, targets: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, str]:
        """``--balance weight``: the loss weights and the line that reports them."""

    @abstractmethod
    def step_total(self, targets: torch.Tensor, weight: torch.Tensor | None) -> float:
        """What divides an optimizer step's summed loss: its examples, or their class weights."""

    @abstractmethod
    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                  step_total: float, world_size: int = 1) -> torch.Tensor:
        """This micro-batch's share of the loss of the whole optimizer step (see each task)."""

    @abstractmethod
    def static_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                    scale: torch.Tensor) -> torch.Tensor:
        """:meth:`step_loss` for one process and one micro-batch, ``1 / step_total`` as a tensor
        (a CUDA graph replays it with each step's value: :mod:`gptclf.training.static_step`)."""

    @abstractmethod
    def tally(self, n: int) -> Tally:
        """A fresh :class:`Tally` over a split of ``n`` examples."""

    # ------------------------------------------------------------------ scores and calibration

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from (temperature-scaled) logits, row by row."""

    @abstractmethod
    def calibrate(self, logits: dict[str, np.ndarray], targets: dict[str, np.ndarray], labels: Sequence[str],
                  fit: bool) -> dict[str, Any]:
        """What is fitted on the validation split (``fit``: ``--calibrate``), as metrics.json
        entries; :meth:`run_config_fields` turns them into config.json's."""

    @abstractmethod
    def run_config_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """config.json's calibration fields (``temperature``, ``thresholds``) from :meth:`calibrate`'s."""

    @abstractmethod
    def split_metrics(self, logits: np.ndarray, targets: np.ndarray, labels: Sequence[str], name: str,
                      fitted: dict[str, Any], texts: Sequence[str] | None = None) -> dict[str, Any]:
        """One split's ``<name>_accuracy``, ``<name>_loss``, ``<name>_report`` (and with ``texts``
        its most confident mistakes), scored as the saved model scores."""

    @abstractmethod
    def summary_lines(self, metrics: dict[str, Any], splits: Sequence[tuple[str, str]]) -> list[str]:
        """The end-of-training lines: every split's headline score, then what calibration did."""

    # ------------------------------------------------------------------ prediction

    @abstractmethod
    def decision(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
        """The decision part of one prediction (``label`` and ``score``, or ``labels``)."""

    def prediction(self, labels: Sequence[str], p: np.ndarray, truncated: bool, empty: bool,
                   thresholds: np.ndarray, windows: int | None = None) -> dict[str, Any]:
        """One prediction as every path reports it (Python, ``predict --json``, HTTP); a chunked
        run's also says how many ``windows`` the text was read as."""
        out = {**self.decision(labels, p, thresholds), "scores": {lab: float(v) for lab, v in zip(labels, p)},
               "truncated": bool(truncated), "empty": bool(empty)}
        if windows is not None:
            out["windows"] = int(windows)
        return out

    @abstractmethod
    def decision_text(self, prediction: dict[str, Any]) -> str:
        """The decision as ``gptclf predict`` prints it before the text."""

    @abstractmethod
    def decision_fields(self) -> dict[str, tuple[Any, str]]:
        """The decision's fields for the HTTP schema: name -> (Python type, description)."""

    @abstractmethod
    def file_columns(self, labels: Sequence[str]) -> list[str]:
        """The decision's columns in ``gptclf predict --output`` (before the ``p_<label>`` columns)."""

    @abstractmethod
    def file_cells(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray,
                   delimiter: str | None) -> list[Any]:
        """The decision's cells of one output row (``delimiter`` None: JSONL, lists stay lists)."""

    @abstractmethod
    def check_gold(self, gold: Sequence[Any], labels: Sequence[str]) -> None:
        """Refuse truth that is not of this task's kind or names unknown labels."""

    @abstractmethod
    def evaluate(self, texts: Sequence[str], gold: Sequence[Any], probs: np.ndarray, labels: Sequence[str],
                 thresholds: np.ndarray, mistakes: int) -> dict[str, Any]:
        """``Classifier.evaluate``'s report on labelled texts, from their probabilities."""

    @abstractmethod
    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """:meth:`evaluate`'s report as ``gptclf evaluate`` prints it."""

    @abstractmethod
    def report_table(self, report: dict[str, Any]) -> tuple[list[tuple[str, Any, str]], list[str], list[list[Any]], str]:
        """A split's report for report.html: (headline items ``(name, value, format)`` with format
        ``pct``, ``num`` or ``int`` and a leading ``*`` for bold, column names, rows, a note)."""

    def headline_names(self) -> dict[str, str]:
        """metrics.json names the report's headline shows under another name."""
        return {}

    def info_fields(self, labels: Sequence[str], thresholds: np.ndarray) -> dict[str, Any]:
        """More fields for ``/v1/model`` and onnx.json (a multi-label model's thresholds)."""
        return {}

    def hf_fields(self, labels: Sequence[str], thresholds: np.ndarray) -> dict[str, Any]:
        """More fields for the ``gptclf`` section of an exported Hugging Face config.json."""
        return {}

    @abstractmethod
    def probability_note(self) -> str:
        """What the probabilities are, for onnx.json."""
