"""Training controls around the book's loop: class-weighted loss and early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_PATIENCE, STOPPING_METRICS, TrainConfig
from ..errors import GptclfError


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


def label_pos_weights(labels: torch.Tensor) -> torch.Tensor:
    """``--balance weight`` for ``--multi-label``: each label's positives weighted by its
    negatives/positives ratio (BCE's ``pos_weight``), so a rare label's misses cost as much in
    total as its false alarms. Every label has a training positive (the vocabulary is the
    training split's)."""
    pos = labels.double().sum(0)
    if (pos == 0).any():
        missing = [i for i, c in enumerate(pos.tolist()) if c == 0]
        raise GptclfError(f"--balance weight: label index(es) {missing} have no training example")
    return ((len(labels) - pos) / pos).clamp(min=1e-3).float()


def step_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
              step_total: float, world_size: int = 1) -> torch.Tensor:
    """This micro-batch's share of the loss of the whole optimizer step.

    An optimizer step covers ``grad_accum`` micro-batches on each of ``world_size``
    processes; ``step_total`` is the number of examples in it (or, with class weights,
    the sum of their weights). Dividing each micro-batch's summed loss by it makes the
    accumulated gradient that of one big batch's mean loss; the factor ``world_size``
    undoes DDP's averaging of gradients over processes. With one process and one
    micro-batch this is exactly the book's ``cross_entropy(logits, targets)``.

    ``--multi-label`` (``targets`` a float 0/1 matrix ``[batch, num_labels]``): binary
    cross-entropy per label, averaged over the labels and the examples; ``weight`` is then
    each label's ``pos_weight`` (:func:`label_pos_weights`) and ``step_total`` the examples.
    """
    if targets.dim() == 2:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="sum")
        return loss * (world_size / (step_total * targets.shape[1]))
    if weight is None:
        loss = nn.functional.cross_entropy(logits, targets)
        scale = len(targets) * world_size / step_total
        return loss if scale == 1.0 else loss * scale
    loss = nn.functional.cross_entropy(logits, targets, weight=weight, reduction="sum")
    return loss * (world_size / step_total)


@dataclass
class EarlyStopping:
    """Tracks the best epoch by a validation metric; stops after ``patience`` epochs without a gain.

    ``patience`` ``None`` only keeps the best weights (the default ``--keep-best``) and never stops.
    With ``val_accuracy`` an epoch that ties the best accuracy but has a lower validation loss
    counts as a gain: on a validation set of a few hundred texts accuracy moves in coarse steps
    and ties are common, and the loss then says which of the tied epochs is more confident
    where it is right.
    """

    metric: str = "val_loss"
    patience: int | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    best_tie: float | None = None  # the best epoch's validation loss, when the metric is accuracy
    bad_epochs: int = 0
    stopped_epoch: int | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in STOPPING_METRICS:
            raise GptclfError(f"--early-stopping-metric must be one of {', '.join(STOPPING_METRICS)}, "
                              f"not {self.metric!r}")

    def improved(self, value: float, tie: float | None = None) -> bool:
        if self.best_value is None:
            return True
        if self.metric == "val_loss":
            return value < self.best_value
        if value == self.best_value and tie is not None and self.best_tie is not None:
            return tie < self.best_tie
        return value > self.best_value

    def update(self, epoch: int, value: float, model: nn.Module, tie: float | None = None) -> bool:
        """Record epoch ``epoch``'s metric (and, for accuracy, its validation loss ``tie``);
        returns True when training should stop."""
        if self.improved(value, tie):
            self.best_value, self.best_epoch, self.best_tie, self.bad_epochs = value, epoch, tie, 0
            self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def restore_best(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in self.best_state.items():
                params[n].copy_(v)

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "best_tie": self.best_tie, "bad_epochs": self.bad_epochs,
                "stopped_epoch": self.stopped_epoch}

    def load_state(self, state: dict[str, Any], best: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self.best_state = dict(best)


def stopper_for(cfg: TrainConfig) -> EarlyStopping | None:
    """The early-stopping / best-weights tracker a run's options ask for, if any."""
    if cfg.early_stopping_metric is not None:
        return EarlyStopping(cfg.early_stopping_metric,
                             cfg.patience if cfg.patience is not None else DEFAULT_PATIENCE)
    if cfg.keep_best:
        # Accuracy, not loss: it is what users compare, and the loss is what the temperature
        # fitted after training (--calibrate) repairs; an epoch whose loss rises through
        # over-confidence while accuracy still climbs is the better classifier.
        return EarlyStopping("val_accuracy", None)
    return None
