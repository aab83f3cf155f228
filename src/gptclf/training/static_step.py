"""The training step on static shapes: forward, loss and backward on fixed buffers, one
CUDA graph per width bucket (:mod:`gptclf.graphs`).

``--static-shapes`` (auto: on for CUDA) pads each training batch to its width bucket and
runs the step through a :class:`gptclf.graphs.StaticRunner`. On a GPU the forward and
backward of each bucket are captured once and replayed; every other part of the step
stays as :class:`gptclf.training.loop.Trainer` does it eagerly (the finite-loss check,
clipping, the learning-rate schedule and the fused AdamW step, one multi-tensor kernel),
so the two paths compute the same step. On the CPU the same buffers run without capture,
which is what the tests compare with the eager path.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import TrainConfig
from ..graphs import Shapes, StaticRunner, capture_available, graph_autocast
from ..models.classifier import SequenceClassifier


def training_shapes(cfg: TrainConfig, model: nn.Module, device: torch.device, precision: str, cap: int,
                      world_size: int, log: Callable[[str], None]) -> Shapes | None:
    """``--static-shapes`` resolved for this run: the shapes, or None (the eager path), saying why
    when ``on`` was asked for but cannot apply."""
    if cfg.static_shapes == "off" or (cfg.static_shapes == "auto" and device.type != "cuda"):
        return None
    why = None
    if cfg.compile:
        why = "--compile brings its own graphs"
    elif world_size > 1 or cfg.grad_accum > 1:
        why = "it needs one process and one micro-batch per step (no --grad-accum, no torchrun)"
    elif cfg.grad_checkpointing:
        why = "--grad-checkpointing recomputes blocks inside the backward pass"
    elif any(getattr(m, "p", 0.0) > 0 for m in model.modules() if isinstance(m, nn.Dropout)) or any(
            getattr(m, "drop_rate", 0.0) > 0 for m in model.modules()):
        why = "dropout is on (padding would change its random masks)"
    if why:
        if cfg.static_shapes == "on":
            log(f"static shapes off: {why}")
        return None
    capture = capture_available(device)
    log(f"static shapes: batches padded to width buckets up to {cap} tokens"
        + (" (--long-text chunk: a training batch's windows in one pass, their rows padded to a power of two)"
           if cfg.long_text == "chunk" else "")
        + (", one CUDA graph per bucket" if capture else " (no CUDA: run without graphs)"))
    return Shapes(cap, precision, capture)


class StaticTrainStep:
    """Forward + loss + backward of one batch on static buffers (a CUDA graph per shape).

    ``step(*inputs, y, scale)`` leaves the gradients in the trainable parameters'
    ``.grad`` (the caller has set them to None first, as the eager step does) and returns
    the loss (a 0-d tensor). ``inputs`` come from the feeder's ``inputs`` (already bucketed):
    ``x, lengths``, and for a chunked run's :class:`~gptclf.training.trunk_cache.WindowFeeder`
    also each window's text and the windows per text; ``forward(model, *inputs)`` gives the
    logits. ``scale`` is ``1 / step_total`` for class-weighted losses, unused otherwise.
    """

    def __init__(self, model: SequenceClassifier, forward: Callable[..., torch.Tensor], params: Sequence[nn.Parameter],
                 weight: torch.Tensor | None, device: torch.device, shapes: Shapes,
                 loss: Callable[..., torch.Tensor]) -> None:
        # ``loss``: the task's static_loss (gptclf.tasks): its step loss with ``1 / step_total`` a tensor.
        self.model, self.forward, self.params, self.weight, self.loss = model, forward, list(params), weight, loss
        self.device, self.shapes = device, shapes
        self.runner = StaticRunner(self._fn, device, shapes.capture, before_capture=self._clear_grads,
                                   after_capture=lambda key: [p.grad for p in self.params])

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _fn(self, *args: torch.Tensor) -> torch.Tensor:
        *inputs, y, scale = args
        with graph_autocast(self.device, self.shapes.precision, self.shapes.capture):
            logits = self.forward(self.model, *inputs)
        loss = self.loss(logits.float(), y, self.weight, scale)
        loss.backward()
        return loss.detach()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """``step(*inputs, y, scale)``: see the class."""
        e: dict[str, Any] = self.runner(*args)
        if e["graph"] is not None:
            # The graph wrote this bucket's gradients into the tensors captured with it.
            for p, g in zip(self.params, e["extra"]):
                p.grad = g
        return e["outputs"]
