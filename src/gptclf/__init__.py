"""gptclf: fine-tune a pretrained decoder LLM into a text classifier (the book's chapter 6).

Python API::

    import gptclf
    lm = gptclf.load_model("gpt2-small")            # the language model, before the head swap
    clf = gptclf.Classifier.load("runs/latest")      # a fine-tuned classifier
    clf.predict(["WINNER!! Claim your prize now"])   # [{"label": "spam", "score": 0.99, ...}]
"""

from __future__ import annotations

__version__ = "0.1.0"

import os
from typing import TYPE_CHECKING, Any

__all__ = ["load_model", "Classifier", "GptclfError", "TrainConfig", "train", "audit", "__version__"]

from .errors import GptclfError


def load_model(name_or_path: str, init: str = "pretrained") -> Any:
    """The backbone language model (vocabulary head on): ``model(ids) -> [batch, seq, vocab]``."""
    from .loading import load_model as _load

    return _load(name_or_path, init)


def train(data: Any = None, *, texts: Any = None, labels: Any = None, **options: Any) -> Any:
    """Run ``gptclf train`` from Python (the same options, as keywords); returns the run directory.

    ``data`` is a file path (or ``"sms-spam"``), a pandas DataFrame, a dict of columns or a
    list of (text, label) pairs; or give ``texts=`` and ``labels=`` lists. With ``task="multi-label"``
    each label is a list of labels (or a ``label_delimiter``-separated string). In-memory data is
    recorded in the run as ``"in-memory (N rows)"``; the run's test split is saved with it.
    Call it as often as you like in one process.
    """
    from .config import AuditOptions, TrainConfig
    from .training.recipe import run_training

    audit = AuditOptions.for_train(bool(options.get("audit")), _audit_options(options))
    examples = _in_memory(data, texts, labels, options)
    cfg = TrainConfig(**options)
    if audit is not None:  # audit=True: gptclf train --audit (audit first, drop its label issues)
        from .auditing.run import audit_first

        cfg = audit_first(cfg, audit, examples)
    return run_training(cfg, examples=examples)


def _audit_options(options: dict[str, Any]) -> dict[str, Any]:
    """The audit's options (``folds``, ``audit_epochs``, ...), taken out of ``options``."""
    from dataclasses import fields

    from .config import AuditOptions

    names = {f.name for f in fields(AuditOptions)}
    return {k: options.pop(k) for k in list(options) if k in names}


def audit(data: Any = None, *, texts: Any = None, labels: Any = None, **options: Any) -> Any:
    """Run ``gptclf audit`` from Python: the data forms and options of :func:`train` plus the audit's
    (``folds``, ``audit_epochs``, ``similarity``, ``outlier_threshold``). Returns the audit as a pandas
    DataFrame (the columns of audit.csv, most suspicious first); with ``out=DIR`` it is also
    written there. Needs ``pip install 'gptclf[audit]'``."""
    from .auditing.run import run_audit
    from .config import AuditOptions, TrainConfig

    audit_options = AuditOptions(**_audit_options(options))
    examples = _in_memory(data, texts, labels, options)
    return run_audit(TrainConfig(**options), audit_options, examples=examples)


def _in_memory(data: Any, texts: Any, labels: Any, options: dict[str, Any]) -> Any:
    """The examples ``data`` (or ``texts`` and ``labels``) holds in memory (None for a file), with
    ``options["data"]`` set to what the run records as its source."""
    from .config import TrainConfig

    examples = None
    task_options = TrainConfig(**options)  # the label rule of its task (one label, or a set per text)
    read_labels = task_options.target_task.label_reader(task_options.label_delimiter)
    if texts is not None or labels is not None:
        if texts is None or labels is None or data is not None:
            raise GptclfError("give texts= and labels= together, or data=, not both")
        from .data.memory import from_texts

        examples = from_texts(texts, labels, read_labels)
    elif data is not None and not isinstance(data, (str, os.PathLike)):
        from .data.memory import from_object

        examples = from_object(data, options.get("text_column", "text"), options.get("label_column", "label"),
                               read_labels)
    if examples is not None:
        data = f"in-memory ({len(examples)} rows)"
    if data is not None:
        options["data"] = os.fspath(data)
    return examples


def __getattr__(name: str) -> Any:
    # Lazy so that ``import gptclf`` stays fast for the CLI's --help.
    if name == "Classifier":
        from .inference.classifier import Classifier

        return Classifier
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(name)


if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .inference.classifier import Classifier
