"""Training controls around the book's loop: best-epoch selection and early stopping (the losses,
class-weighted or not, are each task's: :mod:`gptclf.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_PATIENCE, STOPPING_METRICS, TrainConfig
from ..errors import GptclfError


# The default --keep-best keeps the latest epoch whose validation accuracy is within this many
# standard errors of the top epoch's (a paired, McNemar-style comparison on the same texts).
KEEP_BEST_NOISE_Z = 1.0


@dataclass
class EarlyStopping:
    """Tracks the best epoch by a validation metric; stops after ``patience`` epochs without a gain.

    ``patience`` ``None`` only keeps the best weights and never stops. With ``val_accuracy`` an
    epoch that ties the best accuracy but has a lower validation loss counts as a gain: on a
    validation set of a few hundred texts accuracy moves in coarse steps and ties are common,
    and the loss then says which of the tied epochs is more confident where it is right.

    ``noise_z`` (the default ``--keep-best``; see :meth:`update_within_noise`) keeps instead the
    *latest* epoch whose per-text validation results are not clearly worse than the top epoch's.
    """

    metric: str = "val_loss"
    patience: int | None = None
    noise_z: float | None = None
    best_value: float | None = None
    best_epoch: int | None = None  # the epoch whose weights are kept
    best_tie: float | None = None  # the kept epoch's validation loss, when the metric is accuracy
    bad_epochs: int = 0
    stopped_epoch: int | None = None
    top_epoch: int | None = None  # noise_z: the epoch of highest validation accuracy so far
    top_value: float | None = None
    top_right: str | None = None  # noise_z: which validation texts the top epoch got right, as "0"/"1"
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

    def update(self, epoch: int, value: float, model: nn.Module, tie: float | None = None,
               right: torch.Tensor | None = None) -> bool:
        """Record epoch ``epoch``'s metric (and, for accuracy, its validation loss ``tie``, and
        with ``noise_z`` which validation texts it got ``right``); True when training should stop."""
        if self.noise_z is not None and right is not None:
            if self.update_within_noise(epoch, value, right):
                self._keep(epoch, value, tie, model)
            return False
        if self.improved(value, tie):
            self._keep(epoch, value, tie, model)
        else:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def update_within_noise(self, epoch: int, value: float, right: torch.Tensor) -> bool:
        """Whether to keep this epoch: it is the top so far, or not clearly worse than the top.

        Validation sets are often a few hundred texts, where one epoch "beats" another by a text
        or two by chance. The book keeps the last epoch; an earlier one is kept only when the
        texts the top epoch gets right and this one gets wrong outnumber the reverse by more than
        ``noise_z`` standard errors (sqrt of all the texts they disagree on). An epoch that
        overfits loses many texts at once and is passed over; a tie or a one-text dip is not.
        """
        right = right.bool().cpu()
        if self.top_right is None or self.top_value is None or value > self.top_value:
            self.top_epoch, self.top_value = epoch, value
            self.top_right = "".join("1" if r else "0" for r in right.tolist())
            return True
        top = torch.tensor([c == "1" for c in self.top_right], dtype=torch.bool)
        lost, gained = int((top & ~right).sum()), int((~top & right).sum())
        return lost - gained <= self.noise_z * (lost + gained) ** 0.5  # type: ignore[operator]

    def _keep(self, epoch: int, value: float, tie: float | None, model: nn.Module) -> None:
        self.best_value, self.best_epoch, self.best_tie, self.bad_epochs = value, epoch, tie, 0
        self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore_best(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in self.best_state.items():
                params[n].copy_(v)

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "noise_z": self.noise_z,
                "best_value": self.best_value, "best_epoch": self.best_epoch, "best_tie": self.best_tie,
                "bad_epochs": self.bad_epochs, "stopped_epoch": self.stopped_epoch, "top_epoch": self.top_epoch,
                "top_value": self.top_value, "top_right": self.top_right}

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
        # over-confidence while accuracy still climbs is the better classifier. Within noise
        # of the top accuracy, the latest epoch (docs/accuracy-defaults.md measures why).
        return EarlyStopping("val_accuracy", None, noise_z=KEEP_BEST_NOISE_Z)
    return None
