"""Static shapes and CUDA graphs: a few fixed batch shapes, one captured graph per shape.

With the chapter's small batches of short texts, a GPU step is a few hundred tiny kernels
and the GPU waits on Python and kernel launches. Padding every batch to one of a few
fixed shapes (:func:`bucket_width`, :func:`row_bucket`) lets :class:`StaticRunner` keep
one set of input buffers per shape and, on CUDA, capture the work on them once as a CUDA
graph and replay it: one launch instead of hundreds.

Padding never changes a result: under the causal mask (or the key-padding mask of
``--no-causal-mask``) no real token sees a pad, pooling reads real tokens only, and padded
rows are cut off the output. The buffer logic is the same on every device; only the
capture and replay (``capture=True``) need CUDA, so CPU tests run the same code path.

The width buckets: multiples of 16 up to 128 tokens (SMS-length texts land in 8 shapes),
then 192, 256, 384, 512, 768, 1024, ... (each at most 1.5x the one below), never wider
than the model's context. Rows are padded to a power of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

SMALL_STEP, SMALL_LIMIT = 16, 128


def bucket_width(n: int, cap: int | None = None) -> int:
    """The padded width for a batch whose longest text has ``n`` tokens (see the module doc)."""
    if n <= SMALL_LIMIT:
        width = -(-max(n, 1) // SMALL_STEP) * SMALL_STEP
    else:
        width = 256
        while width < n:
            width *= 2
        if width * 3 // 4 >= n:  # 192, 384, 768, ...: the 1.5x steps between the powers of two
            width = width * 3 // 4
    return width if cap is None else max(min(width, cap), n)


def row_bucket(n: int) -> int:
    """Rows a batch of ``n`` texts is padded to: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


def pad_rows(x: torch.Tensor, lengths: torch.Tensor, rows: int, fill: float | int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [n, ...] and ``lengths`` [n] padded to ``rows`` rows: the extra rows hold ``fill``
    and length 1 (a real position, so pooling indexes inside the row; their results are cut off)."""
    n = x.shape[0]
    if n == rows:
        return x, lengths
    x = torch.cat([x, x.new_full((rows - n, *x.shape[1:]), fill)])
    return x, torch.cat([lengths, lengths.new_ones(rows - n)])


def capture_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


@dataclass(frozen=True)
class Shapes:
    """Static shapes on: batches at most ``cap`` tokens wide, in ``precision``; ``capture``:
    CUDA graphs (else the same buffers, run eagerly)."""

    cap: int
    precision: str
    capture: bool

    def width(self, n: int) -> int:
        return bucket_width(n, self.cap)


class StaticRunner:
    """``fn(*buffers)`` on fixed-shape device buffers, one set per input shape.

    A call copies its inputs (CPU or device tensors, pinned CPU ones without blocking) into
    the buffers of their shape and runs ``fn`` on them; with ``capture`` the first call of
    a shape warms up and captures ``fn`` as a CUDA graph, and every call replays it. The
    outputs are the shape's own buffers: read (or clone) them before the next call.
    ``before_capture``/``after_replay`` let a training step manage gradients around it.
    """

    def __init__(self, fn: Callable[..., Any], device: torch.device, capture: bool, warmup: int = 2,
                 before_capture: Callable[[], None] | None = None,
                 after_capture: Callable[[tuple], Any] | None = None) -> None:
        self.fn, self.device, self.capture, self.warmup = fn, device, capture, warmup
        self.before_capture, self.after_capture = before_capture, after_capture
        self.entries: dict[tuple, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        e = self.entries.get(key)
        if e is None:
            bufs = tuple(torch.empty(x.shape, dtype=x.dtype, device=self.device) for x in inputs)
            e = self.entries[key] = {"key": key, "inputs": bufs, "graph": None, "outputs": None, "extra": None}
        return e

    def __call__(self, *inputs: torch.Tensor) -> Any:
        e = self.entry(inputs)
        for buf, x in zip(e["inputs"], inputs):
            buf.copy_(x, non_blocking=True)
        if not self.capture:
            e["outputs"] = self.fn(*e["inputs"])
        elif e["graph"] is None:
            self._capture(e)
            e["graph"].replay()
        else:
            e["graph"].replay()
        return e

    def _capture(self, e: dict[str, Any]) -> None:
        """Warm up on a side stream (kernel choices, allocator), then capture one run."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                if self.before_capture is not None:
                    self.before_capture()
                self.fn(*e["inputs"])
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.before_capture is not None:
            self.before_capture()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            e["outputs"] = self.fn(*e["inputs"])
        e["graph"] = graph
        if self.after_capture is not None:
            e["extra"] = self.after_capture(e["key"])


class StaticForward:
    """A model's forward pass (no gradients) through :class:`StaticRunner`: rows padded to
    :func:`row_bucket`, one runner per model. ``forward(model, x, lengths) -> logits``;
    ``x`` must already have its bucketed width, and ``fill`` pads its extra rows."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, precision: str,
                 capture: bool, fill: float | int = 0) -> None:
        self.forward, self.device, self.precision, self.capture, self.fill = forward, device, precision, capture, fill
        self.runners: dict[int, tuple[Any, StaticRunner]] = {}

    def __call__(self, model: Any, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [n, classes] (a fresh tensor, not a buffer)."""
        n = x.shape[0]
        x, lengths = pad_rows(x, lengths, row_bucket(n), self.fill)
        if x.device.type == "cpu" and self.device.type == "cuda":  # the copy into the buffers then overlaps
            x, lengths = x.pin_memory(), lengths.pin_memory()
        held = self.runners.get(id(model))
        if held is None:
            held = self.runners[id(model)] = (model, StaticRunner(self._fn(model), self.device, self.capture))
        return held[1](x, lengths)["outputs"][:n].clone()

    def _fn(self, model: Any) -> Callable[..., torch.Tensor]:
        def run(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            with graph_autocast(self.device, self.precision, self.capture):
                return self.forward(model, x, lengths).float()
        return run


def graph_autocast(device: torch.device, precision: str, capture: bool):
    """bf16 autocast as :func:`gptclf.device.autocast`, without its cast cache under capture:
    a graph must run the weights' casts itself, or it would replay casts of stale weights."""
    from .device import autocast

    return autocast(device, precision, cache=not capture)
