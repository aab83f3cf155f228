"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay to zero.

A schedule is a pure function of the optimizer step, so a resumed run needs only the
step count to continue it exactly (there is no scheduler object to checkpoint).
"""

from __future__ import annotations

import math

from ..config import SCHEDULES
from ..errors import GptclfError


def warmup_steps(total_steps: int, steps: int = 0, ratio: float = 0.0) -> int:
    """``--warmup-steps`` or ``--warmup-ratio`` of the run's optimizer steps (rounded up)."""
    if steps and ratio:
        raise GptclfError("give --warmup-steps or --warmup-ratio, not both")
    if ratio:
        return min(total_steps, math.ceil(ratio * total_steps))
    return min(total_steps, steps)


def lr_factor(step: int, total_steps: int, warmup: int, kind: str = "constant") -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warmup rises linearly to 1 over ``warmup`` steps, starting at ``1/warmup`` (no step
    is wasted at lr 0); after it, ``cosine`` and ``linear`` decay towards 0 at
    ``total_steps``.
    """
    if kind not in SCHEDULES:
        raise GptclfError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
