"""The frozen-trunk cache: the frozen blocks' output, computed once per text.

With the first ``k`` blocks frozen and no dropout, their output for a text never
changes, so :class:`TrunkCache` computes it once and every epoch runs only the trainable
tail (:class:`CachedFeeder`). This is exact: it is the same arithmetic, done once.
Without a cache, :class:`TokenFeeder` runs whole texts through the whole model.
"""

from __future__ import annotations

import os
import time
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..progress import PlainProgress

from ..config import TrainConfig
from ..data.batching import collate, round_up, sorted_batches
from ..data.download import cache_dir
from ..data.encoding import EncodedDataset
from ..device import autocast, available_ram, pad_multiple
from ..graphs import Shapes, StaticForward, pad_rows, row_bucket
from ..models.classifier import SequenceClassifier


class TrunkCache:
    """Hidden states entering the first trainable block, one row range per text.

    Rows are the text's tokens as they are fed: unpadded with dynamic padding (a batch
    pads them with zeros, which the causal mask and the pooling never read), or padded
    to ``pad_to`` (the book's fixed padding, where position -1 is a pad token).
    Stored in fp32 in one flat ``[total_tokens, dim]`` tensor: in RAM (or GPU memory), or
    in a memory-mapped file when it does not fit.
    """

    def __init__(self, storage: torch.Tensor, offsets: np.ndarray, row_lengths: np.ndarray,
                 lengths: torch.Tensor, spill_dir: str | None = None, fixed_width: bool = False) -> None:
        self.storage = storage
        self.fixed_width = fixed_width  # rows padded to pad_to: a batch is exactly that wide
        self.offsets = offsets
        self.row_lengths = row_lengths
        self.lengths = lengths  # real token counts (for pooling)
        self.spill_dir = spill_dir

    @staticmethod
    def nbytes(ds: EncodedDataset, dim: int, pad_to: int | None) -> int:
        rows = len(ds) * pad_to if pad_to else int(ds.lengths.sum())
        return rows * dim * 4

    @classmethod
    @torch.inference_mode()
    def build(cls, model: SequenceClassifier, ds: EncodedDataset, end: int, pad_id: int,
              pad_to: int | None, device: torch.device, precision: str, batch_size: int,
              where: str, mode: str = "ram", progress: bool = True,
              spill_root: Path | None = None, log: Callable[[str], None] | None = None) -> "TrunkCache":
        dim = model.config.emb_dim
        lengths = ds.lengths
        row_lengths = np.full(len(ds), pad_to, dtype=np.int64) if pad_to else lengths
        offsets = np.zeros(len(ds) + 1, dtype=np.int64)
        np.cumsum(row_lengths, out=offsets[1:])
        total = int(offsets[-1])
        storage, spill_dir = _storage((total, dim), mode, device, spill_root)
        model.eval()
        batches = sorted_batches(lengths, batch_size)
        bar = tqdm(total=len(ds), desc=f"caching frozen blocks ({where})", unit="text",
                   disable=not progress, leave=False)
        # Without a terminal (no bar), a log still hears how the cache build goes: it can take minutes.
        lines = PlainProgress(f"cache: frozen blocks ({where})", len(ds), "texts", log or print,
                              enabled=not progress and log is not None)
        for idx in batches:
            ids, lens = collate([ds.ids[i] for i in idx], pad_id, pad_to, pad_multiple(device))
            with autocast(device, precision):
                h = model.trunk(ids.to(device, non_blocking=True), end, lens.to(device)).float()
            h = h.to(storage.device)
            for j, i in enumerate(idx):
                n = int(row_lengths[i])
                storage[offsets[i]: offsets[i] + n] = h[j, :n]
            bar.update(len(idx))
            lines.update(len(idx), len(idx))
        bar.close()
        return cls(storage, offsets, row_lengths, torch.as_tensor(lengths), spill_dir, fixed_width=bool(pad_to))

    @torch.inference_mode()
    def extend(self, model: SequenceClassifier, start: int, end: int, device: torch.device, precision: str,
               batch_size: int) -> "TrunkCache":
        """The cache entering block ``end``, from this one (entering ``start``): blocks
        ``start .. end-1`` run once per text, in the batches :meth:`build` would use, so
        ``gptclf tune`` computes every frozen block once for all its candidates."""
        # On disk when this one is (--cache disk, or too big for RAM): tune holds one per cut.
        storage, spill_dir = _storage(tuple(self.storage.shape), "disk" if self.spill_dir else "ram",
                                      self.storage.device, Path(self.spill_dir).parent if self.spill_dir else None)
        model.eval()
        for idx in sorted_batches(self.lengths.numpy(), batch_size):
            hidden, lengths = self.batch(idx, device)
            with autocast(device, precision):
                mask = model.attention_mask(lengths, hidden.shape[1], hidden.device)
                h = model.backbone.run_blocks(hidden, start, end, mask).float()
            h = h.to(storage.device)
            for j, i in enumerate(idx):
                n = int(self.row_lengths[i])
                storage[self.offsets[i]: self.offsets[i] + n] = h[j, :n]
        return TrunkCache(storage, self.offsets, self.row_lengths, self.lengths, spill_dir, fixed_width=self.fixed_width)

    def batch(self, idx: Sequence[int], device: torch.device,
              width_of: Callable[[int], int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` padded with zeros to one width: the longest rounded up to the device's pad
        multiple, or ``width_of(longest)`` (a static-shape bucket, :mod:`gptclf.graphs`)."""
        width = int(self.row_lengths[list(idx)].max())
        if width_of is not None:
            return self._gather(idx, width if self.fixed_width else width_of(width), device)
        if not self.fixed_width:  # position -1 must stay where --padding longest put it
            width = round_up(width, pad_multiple(device))
        out = torch.zeros((len(idx), width, self.storage.shape[1]), dtype=torch.float32,
                          device=self.storage.device)
        for j, i in enumerate(idx):
            n = int(self.row_lengths[i])
            out[j, :n] = self.storage[self.offsets[i]: self.offsets[i] + n]
        lengths = self.lengths[list(idx)]
        # Compare types, not devices: a cache on cuda:0 serves device "cuda" as it is (and only
        # CPU tensors can be pinned).
        if out.device.type == "cpu" and device.type == "cuda":
            out = out.pin_memory().to(device, non_blocking=True)
        elif out.device.type != device.type:
            out = out.to(device)
        return out, lengths.to(device)

    def _gather(self, idx: Sequence[int], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch` in three kernels (gather, zero the padding, copy) instead of one copy per
        row: the static-shape path, where the GPU should not wait on per-row launches."""
        rows = np.asarray(idx, dtype=np.int64)
        pos = np.arange(width, dtype=np.int64)
        valid = pos[None, :] < self.row_lengths[rows][:, None]
        index = torch.from_numpy(np.where(valid, self.offsets[rows][:, None] + pos[None, :], 0).reshape(-1))
        keep = torch.from_numpy(valid)
        if self.storage.device.type == "cuda":
            index, keep = (t.pin_memory().to(self.storage.device, non_blocking=True) for t in (index, keep))
        out = self.storage.index_select(0, index).view(len(rows), width, -1)
        out = out.masked_fill(~keep[..., None], 0.0)
        lengths = self.lengths[rows]
        if out.device.type == "cpu" and device.type == "cuda":
            out, lengths = out.pin_memory(), lengths.pin_memory()
        return out.to(device, non_blocking=True), lengths.to(device, non_blocking=True)

    def close(self) -> None:
        self.storage = torch.empty(0)
        if self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


# -------------------------------------------------------------------------- feeders


class _Feeder:
    """What both feeders share: ``feeder(model, idx) -> logits``, from :meth:`inputs` (the batch
    on the device) and :meth:`forward`. With ``static`` (a :class:`gptclf.graphs.StaticForward`)
    passes without gradients (evaluation) run on fixed shapes, replayed as CUDA graphs on a GPU;
    ``width_of`` pads each batch to its bucket. :meth:`_static` sets both from a
    :class:`gptclf.graphs.Shapes`."""

    static: StaticForward | None = None
    width_of: Callable[[int], int] | None = None

    fill: float | int = 0  # what pads a row: the pad id (tokens) or 0.0 (cached hidden states)

    def _static(self, shapes: Shapes | None, device: torch.device, fill: float | int) -> None:
        self.fill = fill
        if shapes is not None:
            self.static = StaticForward(self.forward, device, shapes.precision, shapes.capture, fill)
            self.width_of = shapes.width

    def inputs(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        x, lengths = self.inputs(idx)
        if self.static is not None and not torch.is_grad_enabled():
            return self.static(model, x, lengths)
        return self.forward(model, x, lengths)


class TokenFeeder(_Feeder):
    """Runs whole texts through the whole model (no cache)."""

    def __init__(self, ds: EncodedDataset, pad_id: int, pad_to: int | None, device: torch.device,
                 shapes: Shapes | None = None) -> None:
        self.ds, self.pad_id, self.pad_to, self.device = ds, pad_id, pad_to, device
        self.multiple = pad_multiple(device)
        self._static(shapes, device, pad_id)

    def inputs(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.ds.ids[i] for i in idx]
        width = self.pad_to
        if width is None and self.width_of is not None:
            width = self.width_of(max(len(r) for r in rows))
        ids, lengths = collate(rows, self.pad_id, width, self.multiple)
        if self.device.type == "cuda":
            ids, lengths = ids.pin_memory(), lengths.pin_memory()
        return ids.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)

    def forward(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model(x, lengths)

    def vectors(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model.vectors(model.backbone.embed(x), lengths, 0)


class CachedFeeder(_Feeder):
    """Runs cached trunk outputs through the trainable tail only."""

    def __init__(self, cache: TrunkCache, start: int, device: torch.device, shapes: Shapes | None = None) -> None:
        self.cache, self.start, self.device = cache, start, device
        self._static(shapes, device, 0.0)

    def inputs(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.batch(idx, self.device, self.width_of)

    def forward(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model.tail(x, lengths, self.start)

    def vectors(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model.vectors(x, lengths, self.start)


def _storage(shape: tuple[int, ...], mode: str, device: torch.device | str,
             spill_root: Path | None) -> tuple[torch.Tensor, str | None]:
    """A cache's fp32 storage: on ``device`` ("ram"), in host RAM ("cpu"), or a memory-mapped
    file in a new spill folder ("disk", also returned), stale spills cleaned first."""
    spill_root = spill_root or cache_dir() / "trunk"
    clean_stale_spills(spill_root)
    if mode != "disk":
        return torch.empty(shape, dtype=torch.float32, device=device if mode == "ram" else "cpu"), None
    spill_root.mkdir(parents=True, exist_ok=True)
    spill_dir = tempfile.mkdtemp(prefix=spill_prefix(), dir=spill_root)
    mm = np.lib.format.open_memmap(os.path.join(spill_dir, "trunk.npy"), mode="w+", dtype=np.float32, shape=shape)
    return torch.from_numpy(mm), spill_dir


# ------------------------------------------------------------------ spills of killed processes


def spill_prefix(pid: int | None = None) -> str:
    """A spill folder's name says whose it is: ``cache-<host>-<pid>-``. A SIGKILLed train or tune
    cannot remove its spill; the next one to build a cache removes it (:func:`clean_stale_spills`)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in ".-_")[:64] or "host"
    return f"cache-{host}-{os.getpid() if pid is None else pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True  # unsure: keep the spill
    return True


def clean_stale_spills(root: Path) -> list[Path]:
    """Remove the spill folders under ``root`` that this host's dead processes left; return them.
    Only this host's (its name is in the folder's): a pid means nothing on another machine that
    shares the cache folder, and a live process's spill is never touched."""
    mine = spill_prefix(0)[: -len("0-")]  # "cache-<host>-"
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        pid = d.name[len(mine):].split("-", 1)[0]
        if d.name.startswith(mine) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def budget_slices(rows: Sequence[int], lengths: np.ndarray, max_tokens: int) -> list[Sequence[int]]:
    """``rows`` in order, cut into runs whose padded size (rows x the longest) stays within
    ``max_tokens`` (at least one row each)."""
    out: list[Sequence[int]] = []
    start, width = 0, 0
    for j, r in enumerate(rows):
        w = max(width, int(lengths[r]))
        if j > start and (j - start + 1) * w > max_tokens:
            out.append(rows[start:j])
            start, w = j, int(lengths[r])
        width = w
    if len(rows) > start:
        out.append(rows[start:])
    return out


class WindowFeeder:
    """``--long-text chunk``: a text's logits from all its windows. ``inner`` (a
    :class:`TokenFeeder` or :class:`CachedFeeder` over the windows, so the frozen blocks run
    once per window through the cache) gives each window's pooled vector, at most
    ``max_tokens`` padded tokens a forward pass; the model's window pool and head combine them."""

    def __init__(self, inner: TokenFeeder | CachedFeeder, ds: EncodedDataset, max_tokens: int) -> None:
        assert ds.offsets is not None
        self.inner, self.offsets, self.max_tokens = inner, ds.offsets, max_tokens
        self.row_lengths = ds.row_lengths
        self.width_of = inner.width_of  # set: --static-shapes (the training step uses inputs and forward)

    def _rows(self, idx: Sequence[int]) -> tuple[list[int], np.ndarray]:
        first, last = self.offsets[list(idx)], self.offsets[[i + 1 for i in idx]]
        return np.concatenate([np.arange(a, b) for a, b in zip(first, last)]).tolist(), last - first

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        rows, counts = self._rows(idx)
        parts = [self.inner.vectors(model, *self.inner.inputs(part))
                 for part in budget_slices(rows, self.row_lengths, self.max_tokens)]
        return model.classify_windows(torch.cat(parts), torch.as_tensor(counts, dtype=torch.long,
                                                                        device=parts[0].device))

    def inputs(self, idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """--static-shapes: the batch's windows in one pass, on fixed shapes: width bucketed (the
        inner feeder's), rows padded to a power of two; the padding rows belong to an extra,
        dummy text (index ``len(idx)``), so ``owner`` [rows] and ``counts`` [texts + 1] have
        shapes the batch size fixes, and no real text's pool or loss sees a padding row."""
        rows, counts = self._rows(idx)
        x, lengths = self.inner.inputs(rows)
        n, padded = len(rows), row_bucket(len(rows))
        x, lengths = pad_rows(x, lengths, padded, self.inner.fill)
        owner = np.concatenate([np.repeat(np.arange(len(idx)), counts), np.full(padded - n, len(idx))])
        counts = np.append(counts, max(padded - n, 1))  # the dummy's (never 0: mean divides by it)
        return x, lengths, torch.as_tensor(owner, device=x.device), torch.as_tensor(counts, device=x.device)

    def forward(self, model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor, owner: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """Logits of :meth:`inputs`' texts (the dummy's cut off)."""
        return model.classify_windows(self.inner.vectors(model, x, lengths), counts, owner)[:-1]


Feeder = Callable[[SequenceClassifier, Sequence[int]], torch.Tensor]  # TokenFeeder, CachedFeeder or WindowFeeder


def model_rows(ds: EncodedDataset) -> EncodedDataset:
    """What the model runs on: the texts, or a chunked split's windows."""
    return ds.window_rows() if ds.offsets is not None else ds


def per_text(feed: TokenFeeder | CachedFeeder, ds: EncodedDataset, cfg: TrainConfig) -> Feeder:
    """``feed`` (over :func:`model_rows`) as a feeder of ``ds``'s texts: a chunked split's through a
    :class:`WindowFeeder`, a batch's worth of tokens a pass (a truncated batch at its widest)."""
    return feed if ds.offsets is None else WindowFeeder(feed, ds, cfg.batch_size * ds.max_length)


def cache_mode(cfg: TrainConfig, model: SequenceClassifier, frozen: int, datasets: Sequence[EncodedDataset],
                pad_to: int | None, device: torch.device, log: Callable[[str], None], copies: int = 1,
                held: int = 0) -> str:
    """Decide where the trunk cache lives (or that there is none), and say why. ``copies``: how
    many caches of these datasets will be held at once (gptclf tune: one per cut); ``held``:
    bytes other caches already hold (tune: another --long-text mode's)."""
    if cfg.cache == "off" or frozen == 0:
        return "off"
    if any(getattr(m, "p", 0.0) > 0 for m in model.modules() if isinstance(m, nn.Dropout)) or any(
            getattr(m, "drop_rate", 0.0) > 0 for m in model.modules()):
        log("trunk cache off: dropout is on, so the frozen blocks' output is not fixed")
        return "off"
    need = copies * sum(TrunkCache.nbytes(d, model.config.emb_dim, pad_to) for d in datasets) + held
    if cfg.cache == "disk":
        return "disk"
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need < 0.5 * free:
            return "ram"
        budget = available_ram() * 0.5
        return "cpu" if need < budget else "disk"
    budget = cfg.cache_max_gb * 2**30 if cfg.cache_max_gb is not None else available_ram() * 0.5
    if need <= budget or cfg.cache == "ram":
        return "ram"
    log(f"trunk cache needs {need / 2**30:.1f} GiB{f' ({copies} cuts)' if copies > 1 else ''}, more than "
        f"{budget / 2**30:.1f} GiB of RAM: "
        "spilling it to disk (use --cache off to recompute instead)")
    return "disk"




class Feeds:
    """One feeder per split (``feeds["train"]``, ...), through the cache when there is one."""

    def __init__(self, feeds: dict[str, Feeder], caches: list[TrunkCache], mode: str, seconds: float) -> None:
        self.feeds, self.caches, self.mode, self.seconds = feeds, caches, mode, seconds

    def __getitem__(self, name: str) -> Feeder:
        return self.feeds[name]

    def close(self) -> None:
        for c in self.caches:
            c.close()


def build_feeds(cfg: TrainConfig, model: SequenceClassifier, frozen: int, datasets: dict[str, EncodedDataset],
                pad_id: int, pad_to: int | None, device: torch.device, precision: str,
                log: Callable[[str], None], shapes: Shapes | None = None) -> Feeds:
    """Decide on the cache, build it for every split (or not) and return the feeders (on the
    static ``shapes``, if given: :mod:`gptclf.graphs`)."""
    rows = {name: model_rows(ds) for name, ds in datasets.items()}
    mode = cache_mode(cfg, model, frozen, list(rows.values()), pad_to, device, log)
    t0 = time.perf_counter()
    feeds: dict[str, Feeder] = {}
    caches: list[TrunkCache] = []
    try:
        for name, ds in rows.items():
            if mode == "off":
                feed: TokenFeeder | CachedFeeder = TokenFeeder(ds, pad_id, pad_to, device, shapes)
            else:
                cache = TrunkCache.build(model, ds, frozen, pad_id, pad_to, device, precision, cfg.eval_batch_size,
                                         name, mode=mode, progress=cfg.progress, log=log)
                caches.append(cache)
                feed = CachedFeeder(cache, frozen, device, shapes)
            feeds[name] = per_text(feed, datasets[name], cfg)
    except BaseException:
        for c in caches:
            c.close()
        raise
    seconds = time.perf_counter() - t0
    if mode != "off":
        log(f"cached the {frozen} frozen blocks' output for {sum(len(d) for d in rows.values())} "
            f"{'windows' if any(d.offsets is not None for d in datasets.values()) else 'texts'} in {seconds:.1f}s ({mode})")
    return Feeds(feeds, caches, mode, seconds if mode != "off" else 0.0)
