"""Progress as plain lines, for logs and pipes where a progress bar would be noise.

``gptclf train 2> train.log`` or a CI job gets one line at most every ``every`` seconds
(and a last one): phase, epoch, position, rate and the estimated time left, e.g.::

    train: epoch 2/5 | step 40/120 (33%) | 55.1 examples/s | ETA 1m27s
"""

from __future__ import annotations

import time
from typing import Callable

# Where a phase's messages go (``print``, a logger's ``info``, a list's ``append``).
Log = Callable[[str], None]


def format_seconds(s: float) -> str:
    s = max(int(round(s)), 0)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class PlainProgress:
    """Count ``update(n)`` calls towards ``total`` and log a line now and then.

    ``examples`` counts what the rate is reported in (texts); ``prefix`` names the phase
    (``"train: epoch 2/5"``). Disabled, it costs one comparison per update.
    """

    def __init__(self, prefix: str, total: int, unit: str, log: Callable[[str], None], *, enabled: bool = True,
                 every: float = 10.0, initial: int = 0) -> None:
        self.prefix, self.total, self.unit, self.log, self.enabled, self.every = prefix, total, unit, log, enabled, every
        self.done, self.examples = initial, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1, examples: int = 0) -> None:
        if not self.enabled:
            return
        self.done += n
        self.examples += examples
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        rate = self.examples / elapsed
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [self.prefix, f"{self.unit} {self.done}/{self.total}{pct}"]
        if self.examples:
            parts.append(f"{rate:.1f} examples/s")
        left = self.total - self.done
        if left > 0 and self.done:
            parts.append(f"ETA {format_seconds(left * elapsed / self.done)}")
        else:
            parts.append(f"took {format_seconds(elapsed)}")
        return " | ".join(parts)
