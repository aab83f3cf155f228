"""Evaluation: the book's ``calc_loss_loader`` / ``calc_accuracy_loader``, and every
split's final metrics (accuracy, loss, per-class report, the test mistakes)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.batching import sorted_batches
from ..device import autocast
from ..metrics import classification_report, most_confident_mistakes
from ..models.classifier import SequenceClassifier
from .trunk_cache import Feeder


@torch.inference_mode()
def calc_loss_and_accuracy(model: SequenceClassifier, feed: Feeder, labels: torch.Tensor,
                           batches: Sequence[Sequence[int]], device: torch.device,
                           precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (the book's calc_loss/accuracy_loader)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for idx in batches:
        with autocast(device, precision):
            logits = feed(model, idx).float()
        y = labels[list(idx)].to(device)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(idx)
    model.train(was_training)
    return (loss_sum / n if n else float("nan")), (correct / n if n else float("nan"))


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
