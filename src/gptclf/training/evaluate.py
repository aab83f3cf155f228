"""Evaluation: the book's ``calc_loss_loader`` / ``calc_accuracy_loader`` in one pass, and
every example's logits (what each task's final metrics are computed from, :mod:`gptclf.tasks`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.batching import sorted_batches
from ..device import autocast
from ..models.classifier import SequenceClassifier
from ..tasks import SINGLE_LABEL, Task
from .trunk_cache import Feeder


def calc_loss_and_accuracy(model: SequenceClassifier, feed: Feeder, labels: torch.Tensor,
                           batches: Sequence[Sequence[int]], device: torch.device,
                           precision: str, task: Task = SINGLE_LABEL) -> tuple[float, float]:
    """Mean loss and score over ``batches`` (the book's calc_loss/accuracy_loader);
    see :func:`loss_accuracy_and_right`."""
    loss, score, _ = loss_accuracy_and_right(model, feed, labels, batches, device, precision, task)
    return loss, score


@torch.inference_mode()
def loss_accuracy_and_right(model: SequenceClassifier, feed: Feeder, labels: torch.Tensor,
                            batches: Sequence[Sequence[int]], device: torch.device,
                            precision: str, task: Task = SINGLE_LABEL) -> tuple[float, float, torch.Tensor | None]:
    """Mean loss, the task's score (accuracy, or a multi-label run's micro-F1 at 0.5) and which
    examples (by index into ``labels``) were right (None where the task has no such thing)."""
    was_training = model.training
    model.eval()
    tally = task.tally(len(labels))
    for idx in batches:
        with autocast(device, precision):
            logits = feed(model, idx).float()
        tally.add(idx, logits, labels[list(idx)].to(device))
    model.train(was_training)
    return tally.result()


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
