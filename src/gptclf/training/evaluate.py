"""Evaluation: the book's ``calc_loss_loader`` / ``calc_accuracy_loader``, and every
split's final metrics (accuracy, loss, per-class report, the test mistakes)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.batching import sorted_batches
from ..device import autocast
from ..metrics import classification_report, most_confident_mistakes, multilabel_mistakes, multilabel_report
from ..models.classifier import SequenceClassifier
from .trunk_cache import Feeder


def calc_loss_and_accuracy(model: SequenceClassifier, feed: Feeder, labels: torch.Tensor,
                           batches: Sequence[Sequence[int]], device: torch.device,
                           precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (the book's calc_loss/accuracy_loader);
    see :func:`loss_accuracy_and_right`."""
    loss, score, _ = loss_accuracy_and_right(model, feed, labels, batches, device, precision)
    return loss, score


@torch.inference_mode()
def loss_accuracy_and_right(model: SequenceClassifier, feed: Feeder, labels: torch.Tensor,
                            batches: Sequence[Sequence[int]], device: torch.device,
                            precision: str) -> tuple[float, float, torch.Tensor | None]:
    """Mean cross-entropy, accuracy, and which examples (by index into ``labels``) were right.

    ``--multi-label`` (``labels`` a 0/1 matrix): the mean binary cross-entropy per label and,
    in place of accuracy, the micro-F1 at threshold 0.5. Micro-F1 rather than exact match
    chooses the best epoch because it moves with every label decision, where exact match on
    a small validation set moves in coarse steps and ignores a text's partly right label set;
    there is then no per-example "right" (``None``).
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    tp = fp_fn = 0
    right = torch.zeros(len(labels), dtype=torch.bool)
    for idx in batches:
        with autocast(device, precision):
            logits = feed(model, idx).float()
        y = labels[list(idx)].to(device)
        if y.dim() == 2:
            loss_sum += float(nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")) / y.shape[1]
            pred, truth = logits >= 0, y > 0.5
            tp += int((pred & truth).sum())
            fp_fn += int((pred != truth).sum())
        else:
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            hit = (logits.argmax(-1) == y).cpu()
            right[list(idx)] = hit
            correct += int(hit.sum())
        n += len(idx)
    model.train(was_training)
    if labels.dim() == 2:
        score = 2 * tp / (2 * tp + fp_fn) if tp + fp_fn else 1.0
        return (loss_sum / n if n else float("nan")), (score if n else float("nan")), None
    return (loss_sum / n if n else float("nan")), (correct / n if n else float("nan")), right


@torch.inference_mode()
def predict_logits(model: SequenceClassifier, feed: Feeder, n: int, batch_size: int,
                   lengths: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    """Class logits (float32) for every example, in example order."""
    model.eval()
    out = np.zeros((n, model.backbone.out_head.out_features), dtype=np.float32)
    for idx in sorted_batches(lengths, batch_size):
        with autocast(device, precision):
            logits = feed(model, idx).float()
        out[idx] = logits.cpu().numpy()
    return out


def split_metrics(logits: np.ndarray, ds: Any, labels: Sequence[str], name: str,
                  texts: Sequence[str] | None = None, temperature: float = 1.0) -> dict[str, Any]:
    """``<name>_accuracy``, ``<name>_loss`` and ``<name>_report`` (per-class P/R/F1, confusion
    matrix, ROC-AUC when binary) of one split from its ``logits``, scored as the saved model
    scores (softmax of logits / ``temperature``); with ``texts``, its most confident mistakes."""
    probs = torch.softmax(torch.from_numpy(logits) / temperature, -1).numpy()
    y = ds.labels.numpy()
    pred = probs.argmax(1)
    out: dict[str, Any] = {
        f"{name}_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        f"{name}_loss": float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else float("nan"),
        f"{name}_report": classification_report(y, pred, list(labels), probs),
    }
    if texts is not None:
        out[f"{name}_mistakes"] = most_confident_mistakes(list(texts), y, probs, list(labels), k=10)
    return out


def multilabel_split_metrics(logits: np.ndarray, ds: Any, labels: Sequence[str], name: str,
                             thresholds: np.ndarray, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """``--multi-label``: one split's ``<name>_accuracy`` (exact match), ``<name>_micro_f1``,
    ``<name>_loss`` (binary cross-entropy per label) and ``<name>_report``
    (:func:`gptclf.metrics.multilabel_report`), scored as the saved model scores: a label is
    predicted when its sigmoid reaches its ``thresholds`` entry."""
    y = ds.labels.numpy() > 0.5
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
