"""The chapter's task: one label per text, a softmax over the classes.

Targets are class indices and the loss is the book's cross-entropy on the last-token
logits; the score that picks the epoch is accuracy; what is calibrated on the validation
split is one temperature ``T`` (the scores are ``softmax(logits / T)``,
:mod:`gptclf.training.calibrate`); a prediction is ``{"label", "score", "scores", ...}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.tables import DEFAULT_LABEL_DELIMITER, Example, LabelReader
from ..errors import GptclfError
from ..metrics import classification_report, most_confident_mistakes
from ..training.calibrate import calibration_summary, fit_temperature
from .base import Tally, Task

LABEL_COLUMN, SCORE_COLUMN = "predicted_label", "predicted_score"


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced data set gets weight 1 everywhere.

    ``n / (num_classes * count_c)`` (scikit-learn's "balanced"): the alternative to the
    book's undersampling that keeps every example and lets each class weigh the same
    in the loss.
    """
    counts = torch.bincount(labels, minlength=num_classes).double()
    if (counts == 0).any():
        missing = [i for i, c in enumerate(counts.tolist()) if c == 0]
        raise GptclfError(f"--balance weight: class index(es) {missing} have no training example")
    return (len(labels) / (num_classes * counts)).float()


def step_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
              step_total: float, world_size: int = 1) -> torch.Tensor:
    """This micro-batch's share of the loss of the whole optimizer step.

    An optimizer step covers ``grad_accum`` micro-batches on each of ``world_size``
    processes; ``step_total`` is the number of examples in it (or, with class weights,
    the sum of their weights). Dividing each micro-batch's summed loss by it makes the
    accumulated gradient that of one big batch's mean loss; the factor ``world_size``
    undoes DDP's averaging of gradients over processes. With one process and one
    micro-batch this is exactly the book's ``cross_entropy(logits, targets)``.
    """
    if weight is None:
        loss = nn.functional.cross_entropy(logits, targets)
        scale = len(targets) * world_size / step_total
        return loss if scale == 1.0 else loss * scale
    loss = nn.functional.cross_entropy(logits, targets, weight=weight, reduction="sum")
    return loss * (world_size / step_total)


class AccuracyTally(Tally):
    """Summed cross-entropy, correct predictions, and which examples were right."""

    def __init__(self, n: int) -> None:
        self.loss_sum, self.correct, self.n = 0.0, 0, 0
        self.right = torch.zeros(n, dtype=torch.bool)

    def add(self, idx: Sequence[int], logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        hit = (logits.argmax(-1) == targets).cpu()
        self.right[list(idx)] = hit
        self.correct += int(hit.sum())
        self.n += len(idx)

    def result(self) -> tuple[float, float, torch.Tensor | None]:
        if not self.n:
            return float("nan"), float("nan"), self.right
        return self.loss_sum / self.n, self.correct / self.n, self.right


class SingleLabel(Task):
    name = "single-label"
    score_name = "accuracy"
    hf_problem_type = "single_label_classification"

    def label_reader(self, delimiter: str = DEFAULT_LABEL_DELIMITER) -> LabelReader | None:
        return None  # the data layer's one-label rule

    def targets(self, examples: Sequence[Example], index: dict[str, int]) -> list[int]:
        return [index[e.label] for e in examples]  # type: ignore[index]

    def gold(self, example: Example) -> Any:
        return example.label

    def balance_weights(self, targets: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, str]:
        weight = class_weights(targets, len(labels))
        return weight, "class weights (inverse frequency): " + ", ".join(
            f"{lab} {w:.3f}" for lab, w in zip(labels, weight.tolist()))

    def step_total(self, targets: torch.Tensor, weight: torch.Tensor | None) -> float:
        return float(len(targets)) if weight is None else float(weight[targets].double().sum())

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                  step_total: float, world_size: int = 1) -> torch.Tensor:
        return step_loss(logits, targets, weight, step_total, world_size)

    def static_loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                    scale: torch.Tensor) -> torch.Tensor:
        if weight is None:
            return nn.functional.cross_entropy(logits, targets)
        return nn.functional.cross_entropy(logits, targets, weight=weight, reduction="sum") * scale

    def tally(self, n: int) -> Tally:
        return AccuracyTally(n)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, -1)

    def calibrate(self, logits: dict[str, np.ndarray], targets: dict[str, np.ndarray], labels: Sequence[str],
                  fit: bool) -> dict[str, Any]:
        """Temperature scaling fitted on the validation split (:mod:`gptclf.training.calibrate`)."""
        if not fit:
            return {}
        temperature = fit_temperature(logits["val"], targets["val"])
        return {"temperature": temperature, "calibration": calibration_summary(logits, targets, temperature)}

    def run_config_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"temperature": float(metrics.get("temperature", 1.0))}

    def split_metrics(self, logits: np.ndarray, targets: np.ndarray, labels: Sequence[str], name: str,
                      fitted: dict[str, Any], texts: Sequence[str] | None = None) -> dict[str, Any]:
        """Accuracy, loss and the per-class report (P/R/F1, confusion matrix, ROC-AUC when binary)
        of ``softmax(logits / T)``; with ``texts``, the most confident mistakes."""
        probs = torch.softmax(torch.from_numpy(logits) / fitted.get("temperature", 1.0), -1).numpy()
        y = targets
        pred = probs.argmax(1)
        out: dict[str, Any] = {
            f"{name}_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            f"{name}_loss": float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else float("nan"),
            f"{name}_report": classification_report(y, pred, list(labels), probs),
        }
        if texts is not None:
            out[f"{name}_mistakes"] = most_confident_mistakes(list(texts), y, probs, list(labels), k=10)
        return out

    def summary_lines(self, metrics: dict[str, Any], splits: Sequence[tuple[str, str]]) -> list[str]:
        lines = [f"Training accuracy: {metrics['train_accuracy'] * 100:.2f}% | "
                 f"Validation accuracy: {metrics['val_accuracy'] * 100:.2f}% | "
                 f"Test accuracy: {metrics['test_accuracy'] * 100:.2f}%"]
        if "calibration" in metrics:
            c = metrics["calibration"]
            lines.append(f"temperature {c['temperature']:.3f} (fitted on validation): expected calibration error "
                         f"on test {c['test_ece_before']:.4f} -> {c['test_ece_after']:.4f}")
        return lines

    def decision(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
        k = int(p.argmax())
        return {"label": labels[k], "score": float(p[k])}

    def decision_text(self, prediction: dict[str, Any]) -> str:
        return f"{prediction['label']}\t{prediction['score']:.4f}"

    def decision_fields(self) -> dict[str, tuple[Any, str]]:
        return {"label": (str, "the most probable label"), "score": (float, "its probability")}

    def file_columns(self, labels: Sequence[str]) -> list[str]:
        return [LABEL_COLUMN, SCORE_COLUMN]

    def file_cells(self, labels: Sequence[str], p: np.ndarray, thresholds: np.ndarray,
                   delimiter: str | None) -> list[Any]:
        k = int(p.argmax())
        return [labels[k], round(float(p[k]), 6)]

    def evaluate(self, texts: Sequence[str], gold: Sequence[Any], probs: np.ndarray, labels: Sequence[str],
                 thresholds: np.ndarray, mistakes: int) -> dict[str, Any]:
        """Accuracy, loss, per-class P/R/F1, confusion matrix, ROC-AUC (binary) and the ``mistakes``
        wrong predictions the model was surest of."""
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.array([index[lab] for lab in gold], dtype=np.int64)
        report = classification_report(y, probs.argmax(1), list(labels), probs)
        report["loss"] = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else float("nan")
        if mistakes:
            report["mistakes"] = most_confident_mistakes(list(texts), y, probs, list(labels), mistakes)
        return report

    def check_gold(self, gold: Sequence[Any], labels: Sequence[str]) -> None:
        """One known label (a string) per text."""
        if not all(isinstance(x, str) for x in gold):
            raise GptclfError("a single-label model is evaluated on one label (a string) per text",
                              hint="this model was not trained with --multi-label")
        unknown = sorted(set(gold) - set(labels))
        if unknown:
            raise GptclfError(f"labels {unknown} are not among the model's labels {list(labels)}",
                              hint="check --label-column, or evaluate on data with the training labels")

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        lines = [f"accuracy: {report['accuracy'] * 100:.2f}%   loss: {report['loss']:.4f}"
                 + (f"   ROC-AUC: {report['roc_auc']:.4f}" if report.get("roc_auc") is not None else "")]
        w = max(len(x) for x in report["labels"]) + 2
        lines.append(f"{'label':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for lab, m in report["per_class"].items():
            lines.append(f"{lab:<{w}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>10d}")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append(" " * w + "".join(f"{lab:>10}" for lab in report["labels"]))
        for lab, row in zip(report["labels"], report["confusion_matrix"]):
            lines.append(f"{lab:<{w}}" + "".join(f"{v:>10d}" for v in row))
        return lines

    def report_table(self, report: dict[str, Any]) -> tuple[list[tuple[str, Any, str]], list[str], list[list[Any]], str]:
        rows = [[lab, m["precision"], m["recall"], m["f1"], m["support"]]
                for lab, m in report.get("per_class", {}).items()]
        head = [("accuracy", report.get("accuracy", float("nan")), "*pct"),
                ("macro F1", report.get("macro_f1", float("nan")), "num"), ("n =", report.get("n", ""), "int")]
        head += [(name, report[key], "num") for name, key in (("ROC-AUC", "roc_auc"), ("loss", "loss"))
                 if report.get(key) is not None]
        return head, ["label", "precision", "recall", "F1", "support"], rows, ""

    def probability_note(self) -> str:
        return "softmax of logits"


SINGLE_LABEL = SingleLabel()
