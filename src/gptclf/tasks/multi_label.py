"""``--multi-label``: each text has a set of labels (zero, one or several), one sigmoid per label.

Targets are 0/1 rows over the labels and the loss is binary cross-entropy per label;
the score that picks the epoch is the micro-F1 at threshold 0.5; what is calibrated on
the validation split is each label's threshold (the F1-maximising one, :func:`fit_thresholds`)
instead of a temperature; a prediction is ``{"labels": [...], "scores", ...}``, the labels
whose probability reaches their threshold, most probable first. config.json records it as
``"task": "multi-label"`` with ``"multi_label": true`` and ``thresholds`` (docs/multi-label.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.tables import DEFAULT_LABEL_DELIMITER, Example, LabelReader, label_sets
from ..errors import GptclfError
from .base import Tally, Task

LABELS_COLUMN = "predicted_labels"


def label_pos_weights(labels: torch.Tensor) -> torch.Tensor:
    """``--balance weight``: each label's positives weighted by its negatives/positives ratio
    (BCE's ``pos_weight``), so a rare label's misses cost as much in total as its false alarms.
    Every label has a training positive (the vocabulary is the training split's)."""
    pos = labels.double().sum(0)
    if (pos == 0).any():
        missing = [i for i, c in enumerate(pos.tolist()) if c == 0]
        raise GptclfError(f"--balance weight: label index(es) {missing} have no training example")
    return ((len(labels) - pos) / pos).clamp(min=1e-3).float()


def fit_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per label, the probability threshold that maximises its F1 on the validation split (in
    place of a temperature: a sigmoid per label has its own operating point).

    The candidates are 0.5 and the midpoints between consecutive distinct validation
    probabilities; ties keep the candidate nearest 0.5, so a label with no positive example
    in validation (F1 0 whatever the threshold) keeps 0.5. The result is always in (0, 1).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    out = np.full(probs.shape[1], 0.5)
    for j in range(probs.shape[1]):
        out[j] = _best_threshold(probs[:, j], y[:, j])
    return out


def _best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    positives = int(y.sum())
    if len(p) == 0 or positives == 0:
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, tp = p[order], np.cumsum(y[order])
    # Predicting the top i+1 as positive: F1 = 2 tp / (predicted + positives). Cut only between distinct values.
    cut = np.flatnonzero(np.append(ps[:-1] > ps[1:], True))
    f1 = 2 * tp[cut] / (cut + 1 + positives)
    below = np.append(ps[1:], 0.0)[cut]
    thresholds = (ps[cut] + below) / 2
    f1_half = 2 * float(y[p >= 0.5].sum()) / (int((p >= 0.5).sum()) + positives)
    best = float(f1.max())
    if f1_half >= best - 1e-12:
        return 0.5
    ties = thresholds[f1 >= best - 1e-12]
    t = float(ties[np.argmin(np.abs(ties - 0.5))])
    return min(max(t, 1e-6), 1 - 1e-6)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics from 0/1 matrices ``[n, num_labels]``: per-label precision, recall, F1 and
    support; micro F1 (every yes/no decision pooled: the frequent labels weigh most), macro F1
    (the labels' mean: each label weighs the same), exact match (the share of texts whose whole
    label set is right; also ``accuracy``) and the Hamming loss (the share of wrong yes/no
    decisions). A label with no true and no predicted example has F1 0."""
    y = np.asarray(y_true, dtype=bool).reshape(-1, len(labels))
    p = np.asarray(y_pred, dtype=bool).reshape(-1, len(labels))
    tp, fp, fn = (y & p).sum(0), (~y & p).sum(0), (y & ~p).sum(0)
    per_class = {}
    for i, name in enumerate(labels):
        pr = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        rc = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        per_class[name] = {"precision": float(pr), "recall": float(rc), "f1": float(2 * pr * rc / (pr + rc))
                           if pr + rc else 0.0, "support": int(y[:, i].sum()), "predicted": int(p[:, i].sum())}
    n = len(y)
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    exact = float((y == p).all(1).mean()) if n else 0.0
    return {
        "multi_label": True,
        "accuracy": exact,
        "exact_match": exact,
        "n": n,
        "per_class": per_class,
        "micro_precision": TP / (TP + FP) if TP + FP else 0.0,
        "micro_recall": TP / (TP + FN) if TP + FN else 0.0,
        "micro_f1": 2 * TP / (2 * TP + FP + FN) if TP + FP + FN else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])) if labels else 0.0,
        "hamming_loss": float((y != p).mean()) if n else 0.0,
        "labels": list(labels),
    }


def multilabel_mistakes(texts: Sequence[str], y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                        labels: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` texts with the surest wrong yes/no decision (a label predicted with the highest
    probability that is not true, or a true label given the lowest), each as ``{"text", "true",
    "predicted", "probability"}`` with the label sets written ``a, b`` and the wrong decision's
    confidence."""
    y = np.asarray(y_true, dtype=bool)
    if len(y) == 0 or k <= 0:
        return []
    pred = probs >= thresholds
    conf = np.where(pred, probs, 1 - probs) * (pred != y)  # 0 where the decision is right
    worst = conf.max(1)
    order = [i for i in np.argsort(-worst, kind="stable") if worst[i] > 0][:k]

    def names(row: np.ndarray) -> str:
        return ", ".join(lab for lab, on in zip(labels, row) if on) or "(none)"

    return [{"text": str(texts[i]), "true": names(y[i]), "predicted": names(pred[i]),
             "probability": float(worst[i])} for i in order]


class MicroF1Tally(Tally):
    """Summed BCE per label and the pooled yes/no decisions at threshold 0.5.

    Micro-F1 rather than exact match chooses the best epoch because it moves with every label
    decision, where exact match on a small validation set moves in coarse steps and ignores a
    text's partly right label set; there is no per-example "right" (``None``).
    """

    def __init__(self, n: int) -> None:
        self.loss_sum, self.tp, self.fp_fn, self.n = 0.0, 0, 0, 0

    def add(self, idx: Sequence[int], logits: torch.Tensor, targets: torch.Tensor) -> None:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        self.loss_sum += float(bce) / targets.shape[1]
        pred, truth = logits >= 0, targets > 0.5
        self.tp += int((pred & truth).sum())
        self.fp_fn += int((pred != truth).sum())
        self.n += len(idx)

    def result(self) -> tuple[float, float, torch.Tensor | None]:
        score = 2 * self.tp / (2 * self.tp + self.fp_fn) if self.tp + self.fp_fn else 1.0
        return (self.loss_sum / self.n if self.n else float("nan")), (score if self.n else float("nan")), None


class MultiLabel(Task):
    name = "multi-label"
    score_name = "micro-F1"
    hf_problem_type = "multi_label_classification"  # transformers then trains with BCE
    can_undersample = False
    schema_name = "MultiLabel"

    # ------------------------------------------------------------------ options, data, config.json

    def check_options(self, balance: str) -> None:
        if balance == "undersample":
            raise GptclfError("--balance undersample cannot be used with --multi-label: a row has several labels, "
                              "so no row can be dropped to shrink one label without shrinking others",
                              hint="use --balance none (default) or --balance weight (each label's positives "
                                   "weighted by its negatives/positives ratio)")

    def label_reader(self, delimiter: str = DEFAULT_LABEL_DELIMITER) -> LabelReader | None:
        if not delimiter:
            raise GptclfError("--label-delimiter must not be empty")
        return label_sets(delimiter)

    def check_examples(self, examples: list[Example], source: str) -> None:
        if examples and examples[0].labels is None:
            raise GptclfError(f"{source}: --multi-label needs a label set per row",
                              hint="the SMS data has one label per text; drop --multi-label")

    def split_notes(self, parts: dict[str, list[Example]]) -> dict[str, Any]:
        return {"multi_label": True,
                "no_label_counts": {k: sum(1 for e in part if not e.labels) for k, part in parts.items()}}

    def count_note(self, part: list[Example]) -> list[str]:
        return [f"no label {sum(1 for e in part if not e.labels)}"]

    @staticmethod
    def in_config(d: dict[str, Any]) -> bool:
        """config.json written before ``task`` existed marks a multi-label run this way."""
        return d.get("multi_label", False) is True

    @staticmethod
    def check_config(d: dict[str, Any], labels: list[str], where: str) -> None:
        """``multi_label`` (a bool) and its ``thresholds`` (one in (0, 1) per label, or none: 0.5 each)."""
        if not isinstance(d.get("multi_label", False), bool):
            raise GptclfError(f"{where}: 'multi_label' must be true or false, not {d['multi_label']!r}")
        t = d.get("thresholds")
        if t is None:
            return
        if not d.get("multi_label", False) and d.get("task") != MultiLabel.name:
            raise GptclfError(f"{where}: 'thresholds' are for a multi-label model, but 'multi_label' is not true")
        if not isinstance(t, dict) or set(t) != set(labels) or not all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < 1 for v in t.values()):
            raise GptclfError(f"{where}: 'thresholds' must give every label a number between 0 and 1")

    def config_markers(self) -> dict[str, Any]:
        return {"multi_label": True}  # what config.json of earlier versions (and their readers) know it by

    def targets(self, examples: Sequence[Example], index: dict[str, int]) -> np.ndarray:
        """Each example's 0/1 row over the labels (multi-hot)."""
        y = np.zeros((len(examples), len(index)), dtype=np.float32)
        for i, e in enumerate(examples):
            y[i, [index[lab] for lab in e.label_set()]] = 1.0
        return y

    def gold(self, example: Example) -> Any:
        return example.label_set()

    # ------------------------------------------------------------------ training

    def balance_weights(self, targets: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, str]:
        weight = label_pos_weights(targets)
        return weight, "label positive weights (negatives/positives): " + ", ".join(
            f"{lab} {w:.3f}" for lab, w in zip(labels, weight.tolist()))

    def step_total(self, targets: torch.Tensor, weight: torch.Tensor | None) -> float:
        return float(len(targets))  # pos_weight weighs within a label, not the examples

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                  step_total: float, world_size: int = 1) -> torch.Tensor:
        """Binary cross-entropy per label, averaged over the labels and the step's examples;
        ``weight`` is each label's ``pos_weight`` (:func:`label_pos_weights`)."""
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="sum")
        return loss * (world_size / (step_total * targets.shape[1]))

    def static_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                    scale: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="sum")
        return loss * scale / targets.shape[1]

    def tally(self, n: int) -> Tally:
        return MicroF1Tally(n)

    # ------------------------------------------------------------------ scores and calibration

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def calibrate(self, logits: dict[str, np.ndarray], targets: dict[str, np.ndarray], labels: Sequence[str],
                  fit: bool) -> dict[str, Any]:
        """Per-label thresholds fitted on validation (``--calibrate``, the default; else 0.5 each)."""
        thresholds = np.full(len(labels), 0.5)
        if fit:
            thresholds = fit_thresholds(sigmoid(logits["val"]), targets["val"] > 0.5)
        return {"thresholds": dict(zip(labels, thresholds.tolist()))}

    def run_config_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"thresholds": metrics.get("thresholds")}

    def split_metrics(self, logits: np.ndarray, targets: np.ndarray, labels: Sequence[str], name: str,
                      fitted: dict[str, Any], texts: Sequence[str] | None = None) -> dict[str, Any]:
        """``<name>_accuracy`` (exact match), ``<name>_micro_f1``, ``<name>_loss`` (BCE per label)
        and ``<name>_report`` (:func:`multilabel_report`), a label predicted when its sigmoid
        reaches its threshold."""
        thresholds = np.array([fitted["thresholds"][lab] for lab in labels])
        y = targets > 0.5
        z = torch.from_numpy(logits)
        probs = torch.sigmoid(z).numpy()
        report = multilabel_report(y, probs >= thresholds, list(labels))
        loss = nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y.astype(np.float32)))
        out: dict[str, Any] = {
            f"{name}_accuracy": report["exact_match"] if len(y) else float("nan"),
            f"{name}_micro_f1": report["micro_f1"] if len(y) else float("nan"),
            f"{name}_loss": float(loss) if len(y) else float("nan"),
            f"{name}_report": report,
        }
        if texts is not None:
            out[f"{name}_mistakes"] = multilabel_mistakes(list(texts), y, probs, thresholds, list(labels), k=10)
        return out

    def summary_lines(self, metrics: dict[str, Any], splits: Sequence[tuple[str, str]]) -> list[str]:
        return [" | ".join(f"{name} micro-F1 {metrics[f'{key}_micro_f1'] * 100:.2f}%, exact match "
                           f"{metrics[f'{key}_accuracy'] * 100:.2f}%" for key, name in splits)]

    # ------------------------------------------------------------------ prediction

    def decision(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
        on = [i for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
        return {"labels": [labels[i] for i in on]}

    def decision_text(self, prediction: dict[str, Any]) -> str:
        """Every label over its threshold with its probability, most probable first."""
        return ", ".join(f"{lab} {prediction['scores'][lab]:.4f}" for lab in prediction["labels"]) or "(no label)"

    def decision_fields(self) -> dict[str, tuple[Any, str]]:
        return {"labels": (list[str], "every label whose probability reaches its threshold (chosen on the "
                                      "validation split at training), most probable first; may be empty"),
                "scores": (dict[str, float], "each label's own probability (a sigmoid per label: they do not "
                                             "sum to 1)")}

    def file_columns(self, labels: Sequence[str]) -> list[str]:
        return [LABELS_COLUMN]

    def file_cells(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray,
                   delimiter: str | None) -> list[Any]:
        """The predicted labels: a list (JSONL) or joined by the run's ``--label-delimiter``, the
        way ``gptclf train --multi-label`` reads them back."""
        on = [labels[i] for i in sorted(range(len(labels)), key=lambda i: -p[i]) if p[i] >= thresholds[i]]
        return [on if delimiter is None else delimiter.join(on)]

    def check_gold(self, gold: Sequence[Any], labels: Sequence[str]) -> None:
        """A list of known labels per text."""
        if any(isinstance(x, str) for x in gold):
            raise GptclfError("a multi-label model is evaluated on a list of labels per text, not one string",
                              hint="read the data with multi_label=True (gptclf evaluate does)")
        unknown = sorted({lab for x in gold for lab in x} - set(labels))
        if unknown:
            raise GptclfError(f"labels {unknown} are not among the model's labels {list(labels)}",
                              hint="check --label-column and --label-delimiter")

    def evaluate(self, texts: Sequence[str], gold: Sequence[Any], probs: np.ndarray, labels: Sequence[str],
                 thresholds: np.ndarray, mistakes: int) -> dict[str, Any]:
        """:func:`multilabel_report` at the run's thresholds, the mean BCE, and the ``mistakes``
        surest wrong decisions."""
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.zeros((len(gold), len(labels)), dtype=bool)
        for i, x in enumerate(gold):
            y[i, [index[lab] for lab in x]] = True
        probs = probs.astype(np.float64)
        report = multilabel_report(y, probs >= thresholds, list(labels))
        p = np.clip(probs, 1e-12, 1 - 1e-12)
        report["loss"] = float(-(y * np.log(p) + ~y * np.log(1 - p)).mean()) if len(y) else float("nan")
        report["thresholds"] = dict(zip(labels, thresholds.tolist()))
        if mistakes:
            report["mistakes"] = multilabel_mistakes(list(texts), y, probs, thresholds, list(labels), mistakes)
        return report

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """Micro/macro F1, exact match, Hamming loss, then one row per label."""
        lines = [f"micro F1: {report['micro_f1']:.4f}   macro F1: {report['macro_f1']:.4f}   exact match: "
                 f"{report['exact_match'] * 100:.2f}%   Hamming loss: {report['hamming_loss']:.4f}   "
                 f"loss: {report['loss']:.4f}"]
        w = max(len(x) for x in report["labels"]) + 2
        lines.append(f"{'label':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'threshold':>11}")
        for lab, m in report["per_class"].items():
            lines.append(f"{lab:<{w}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
                         f"{m['support']:>10d}{report['thresholds'][lab]:>11.4f}")
        return lines

    def report_table(self, report: dict[str, Any]) -> tuple[list[tuple[str, Any, str]], list[str], list[list[Any]], str]:
        """There is no confusion matrix: each label is its own yes/no decision."""
        rows = [[lab, m["precision"], m["recall"], m["f1"], m["support"], m.get("predicted", "")]
                for lab, m in report.get("per_class", {}).items()]
        nan = float("nan")
        head = [("micro F1", report.get("micro_f1", nan), "*num"), ("macro F1", report.get("macro_f1", nan), "num"),
                ("exact match", report.get("exact_match", nan), "pct"),
                ("Hamming loss", report.get("hamming_loss", nan), "num"), ("n =", report.get("n", ""), "int")]
        if report.get("loss") is not None:
            head.append(("loss", report["loss"], "num"))
        note = ("Multi-label: each label is predicted when its probability reaches its threshold; support counts "
                "the texts that have the label, predicted those given it.")
        return head, ["label", "precision", "recall", "F1", "support", "predicted"], rows, note

    def headline_names(self) -> dict[str, str]:
        return {"_accuracy": "_exact_match"}  # *_accuracy of this task is the exact match (the whole set right)

    def info_fields(self, labels: Sequence[str], thresholds: np.ndarray) -> dict[str, Any]:
        return {"multi_label": True, "thresholds": dict(zip(labels, np.asarray(thresholds).tolist()))}

    def hf_fields(self, labels: Sequence[str], thresholds: np.ndarray) -> dict[str, Any]:
        return {"thresholds": dict(zip(labels, np.asarray(thresholds).tolist()))}  # travel in "gptclf"

    def probability_note(self) -> str:
        return ("sigmoid of each logit (multi-label: a label is predicted when its probability reaches its "
                "threshold)")


MULTI_LABEL = MultiLabel()
