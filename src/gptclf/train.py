"""Fine-tuning: the book's ``train_classifier_simple`` loop, made fast and reliable.

The chapter's recipe is the default: GPT-2 small, SMS spam balanced and split 70/10/20,
the vocabulary head swapped for ``num_classes`` outputs, all but the last block and the
final norm frozen, cross-entropy on the last token, AdamW (lr 5e-5, weight decay 0.1),
batch 8, 5 epochs, evaluation every 50 steps on 5 batches.

What makes it fast (``--reference`` turns all of it off to run the book's exact path):

* **Frozen-trunk cache.** With the first ``k`` blocks frozen and no dropout, their output
  for a text never changes, so it is computed once (:class:`TrunkCache`) and every epoch
  runs only the trainable tail. This is exact: it is the same arithmetic, done once.
* **Dynamic padding with length-grouped batches.** Each batch is padded to its own
  longest text instead of the longest text of the data set; right padding under a
  causal mask never changes a real token's hidden state, so pooling the last *real*
  token (``last-nonpad``) gives every text the same result in any batch.
* On GPUs: bf16 autocast, fused AdamW, TF32, optional ``torch.compile``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .classifier import SequenceClassifier, freeze_for_finetuning, replace_head
from .data import (EncodedDataset, cache_dir, collate, encode_examples, load_splits,
                   shuffled_batches, sorted_batches)
from .device import autocast, configure_backends, pick_device, resolve_precision
from .errors import GptclfError
from .metrics import classification_report
from .weights import Backbone, check_model_name, load_backbone


@dataclass
class TrainConfig:
    """Every option of ``gptclf train``; the defaults are the book's chapter-6 settings."""

    model: str = "gpt2-small"
    init: str = "pretrained"
    data: str = "sms-spam"
    val: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    balance: str = "undersample"
    seed: int = 123
    batch_size: int = 8
    epochs: int = 5
    lr: float = 5e-5
    weight_decay: float = 0.1
    eval_freq: int = 50
    eval_iter: int = 5
    eval_batch_size: int = 64
    trainable: str = "last_block"
    # --trainable lora (the book's appendix E); rank/alpha 16 as the book's example.
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: str | None = None  # comma-separated block-relative names; None: all four linears
    lora_dropout: float = 0.0
    grad_checkpointing: bool = False
    causal_mask: bool = True  # False: the book's "no causal mask" experiment (pads are masked)
    context_length: int | None = None  # pad every text to N tokens (the book's "pad to 1024")
    pooling: str | None = None  # None: last-nonpad, or 'last' with --reference
    padding: str | None = None  # 'dynamic' (default) or 'longest' (the book's)
    max_length: int | None = None  # default: the longest training text
    group_by_length: int = 4  # batches per length-sorted group; 0 = plain shuffle
    cache: str = "auto"  # auto | off | ram | disk
    cache_max_gb: float | None = None
    reference: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    out: str | None = None
    progress: bool = True

    def lora_config(self):  # -> lora.LoRAConfig
        from .lora import LoRAConfig, parse_targets

        return LoRAConfig(self.lora_rank, self.lora_alpha, parse_targets(self.lora_targets), self.lora_dropout)

    def resolved(self) -> "TrainConfig":
        """Fill in the choices that depend on ``--reference``."""
        c = TrainConfig(**asdict(self))
        if c.reference:
            c.pooling = c.pooling or "last"
            c.padding = c.padding or "longest"
            c.cache = "off"
            c.group_by_length = 0
            c.eval_batch_size = c.batch_size
        if c.context_length is not None:
            if c.context_length < 1:
                raise GptclfError("--context-length must be at least 1")
            if c.padding == "dynamic" or (c.max_length is not None and c.max_length != c.context_length):
                raise GptclfError("--context-length N pads every text to N tokens; it cannot be combined "
                                  "with --padding dynamic or a different --max-length")
            c.padding, c.max_length = "longest", c.context_length
        c.pooling = c.pooling or "last-nonpad"
        c.padding = c.padding or "dynamic"
        if c.padding not in ("dynamic", "longest"):
            raise GptclfError(f"--padding must be dynamic or longest, not {c.padding!r}")
        if c.pooling == "last" and c.padding == "dynamic":
            raise GptclfError(
                "--pooling last reads position -1, which is padding (and depends on the batch) "
                "under dynamic padding",
                hint="use --pooling last-nonpad (default), or --padding longest for the book's behaviour")
        if c.cache not in ("auto", "off", "ram", "disk"):
            raise GptclfError(f"--cache must be auto, off, ram or disk, not {c.cache!r}")
        for name in ("batch_size", "epochs", "eval_freq", "eval_iter", "eval_batch_size"):
            if getattr(c, name) < 1:
                raise GptclfError(f"--{name.replace('_', '-')} must be at least 1")
        if not c.lr > 0:
            raise GptclfError("--lr must be positive")
        if c.trainable == "lora":
            c.lora_config()  # fail fast on a bad rank/alpha/dropout, before any data is read
        return c


# ------------------------------------------------------------------------ trunk cache


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class TrunkCache:
    """Hidden states entering the first trainable block, one row range per text.

    Rows are the text's tokens as they are fed: unpadded with dynamic padding (a batch
    pads them with zeros, which the causal mask and the pooling never read), or padded
    to ``pad_to`` (the book's fixed padding, where position -1 is a pad token).
    Stored in fp32 in one flat ``[total_tokens, dim]`` tensor: in RAM (or GPU memory), or
    in a memory-mapped file when it does not fit.
    """

    def __init__(self, storage: torch.Tensor, offsets: np.ndarray, row_lengths: np.ndarray,
                 lengths: torch.Tensor, spill_dir: str | None = None) -> None:
        self.storage = storage
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
              spill_root: Path | None = None) -> "TrunkCache":
        dim = model.config.emb_dim
        lengths = ds.lengths
        row_lengths = np.full(len(ds), pad_to, dtype=np.int64) if pad_to else lengths
        offsets = np.zeros(len(ds) + 1, dtype=np.int64)
        np.cumsum(row_lengths, out=offsets[1:])
        total = int(offsets[-1])
        spill_dir = None
        if mode == "disk":
            spill_root = spill_root or cache_dir() / "trunk"
            spill_root.mkdir(parents=True, exist_ok=True)
            spill_dir = tempfile.mkdtemp(prefix="cache-", dir=spill_root)
            mm = np.lib.format.open_memmap(os.path.join(spill_dir, "trunk.npy"), mode="w+",
                                           dtype=np.float32, shape=(total, dim))
            storage = torch.from_numpy(mm)
        else:
            storage = torch.empty((total, dim), dtype=torch.float32,
                                  device=device if mode == "ram" else "cpu")
        model.eval()
        batches = sorted_batches(lengths, batch_size)
        bar = tqdm(total=len(ds), desc=f"caching frozen blocks ({where})", unit="text",
                   disable=not progress, leave=False)
        for idx in batches:
            ids, lens = collate([ds.ids[i] for i in idx], pad_id, pad_to)
            with autocast(device, precision):
                h = model.trunk(ids.to(device, non_blocking=True), end, lens.to(device)).float()
            h = h.to(storage.device)
            for j, i in enumerate(idx):
                n = int(row_lengths[i])
                storage[offsets[i]: offsets[i] + n] = h[j, :n]
            bar.update(len(idx))
        bar.close()
        return cls(storage, offsets, row_lengths, torch.as_tensor(lengths), spill_dir)

    def batch(self, idx: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(self.row_lengths[list(idx)].max())
        out = torch.zeros((len(idx), width, self.storage.shape[1]), dtype=torch.float32,
                          device=self.storage.device)
        for j, i in enumerate(idx):
            n = int(self.row_lengths[i])
            out[j, :n] = self.storage[self.offsets[i]: self.offsets[i] + n]
        lengths = self.lengths[list(idx)]
        if out.device != device:
            out = out.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else out.to(device)
        return out, lengths.to(device)

    def close(self) -> None:
        self.storage = torch.empty(0)
        if self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


# -------------------------------------------------------------------------- feeders


class TokenFeeder:
    """Runs whole texts through the whole model (no cache)."""

    def __init__(self, ds: EncodedDataset, pad_id: int, pad_to: int | None, device: torch.device) -> None:
        self.ds, self.pad_id, self.pad_to, self.device = ds, pad_id, pad_to, device

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        ids, lengths = collate([self.ds.ids[i] for i in idx], self.pad_id, self.pad_to)
        if self.device.type == "cuda":
            ids, lengths = ids.pin_memory(), lengths.pin_memory()
        return model(ids.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True))


class CachedFeeder:
    """Runs cached trunk outputs through the trainable tail only."""

    def __init__(self, cache: TrunkCache, start: int, device: torch.device) -> None:
        self.cache, self.start, self.device = cache, start, device

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        hidden, lengths = self.cache.batch(idx, self.device)
        return model.tail(hidden, lengths, self.start)


Feeder = Callable[[SequenceClassifier, Sequence[int]], torch.Tensor]


# ----------------------------------------------------------------------- evaluation


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
def predict_probabilities(model: SequenceClassifier, feed: Feeder, n: int, batch_size: int,
                          lengths: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    """Class probabilities for every example, in example order."""
    model.eval()
    out = np.zeros((n, model.backbone.out_head.out_features), dtype=np.float32)
    for idx in sorted_batches(lengths, batch_size):
        with autocast(device, precision):
            logits = feed(model, idx).float()
        out[idx] = torch.softmax(logits, -1).cpu().numpy()
    return out


# --------------------------------------------------------------------------- training


@dataclass
class History:
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


def train_classifier(model: SequenceClassifier, optimizer: torch.optim.Optimizer,
                     train_feed: Feeder, val_feed: Feeder, train_ds: EncodedDataset,
                     val_ds: EncodedDataset, cfg: TrainConfig, device: torch.device,
                     precision: str, log: Callable[[str], None]) -> tuple[History, bool]:
    """The book's ``train_classifier_simple``: returns the history and whether it was interrupted."""
    history = History()
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    train_y = train_ds.labels.to(device)
    lengths = train_ds.lengths
    val_batches = [list(range(i, min(i + cfg.batch_size, len(val_ds))))
                   for i in range(0, len(val_ds), cfg.batch_size)][: cfg.eval_iter]

    def eval_batches() -> list[list[int]]:
        return shuffled_batches(len(train_ds), cfg.batch_size, eval_gen)[: cfg.eval_iter]

    examples_seen, global_step = 0, -1
    model.train()
    for epoch in range(cfg.epochs):
        batches = shuffled_batches(len(train_ds), cfg.batch_size, shuffle_gen, drop_last=True,
                                   lengths=lengths, group_size=cfg.group_by_length)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=False, dynamic_ncols=True)
        t0, seen0 = time.perf_counter(), examples_seen
        try:
            for idx in bar:
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    logits = train_feed(model, idx)
                loss = nn.functional.cross_entropy(logits.float(), train_y[idx])
                loss.backward()
                optimizer.step()
                examples_seen += len(idx)
                global_step += 1
                if global_step % cfg.eval_freq == 0:
                    train_loss, _ = calc_loss_and_accuracy(model, train_feed, train_ds.labels, eval_batches(),
                                                           device, precision)
                    val_loss, _ = calc_loss_and_accuracy(model, val_feed, val_ds.labels, val_batches,
                                                         device, precision)
                    history.steps.append({"step": global_step, "epoch": epoch + 1,
                                          "examples_seen": examples_seen,
                                          "train_loss": train_loss, "val_loss": val_loss})
                    log(f"Ep {epoch + 1} (Step {global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                rate = (examples_seen - seen0) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{rate:.1f}")
        except KeyboardInterrupt:
            bar.close()
            log(f"interrupted in epoch {epoch + 1} at step {global_step}")
            return history, True
        bar.close()
        _, train_acc = calc_loss_and_accuracy(model, train_feed, train_ds.labels, eval_batches(),
                                              device, precision)
        _, val_acc = calc_loss_and_accuracy(model, val_feed, val_ds.labels, val_batches, device, precision)
        seconds = time.perf_counter() - t0
        history.epochs.append({"epoch": epoch + 1, "examples_seen": examples_seen,
                               "train_accuracy": train_acc, "val_accuracy": val_acc,
                               "seconds": seconds, "examples_per_second": (examples_seen - seen0) / seconds})
        log(f"Training accuracy: {train_acc * 100:.2f}% | Validation accuracy: {val_acc * 100:.2f}% "
            f"| {(examples_seen - seen0) / seconds:.1f} examples/s")
    return history, False


def build_classifier(backbone: Backbone, num_classes: int, trainable: str, pooling: str,
                     seed: int, lora: Any = None, causal: bool = True,
                     grad_checkpointing: bool = False) -> tuple[SequenceClassifier, int]:
    """Head swap (seeded, as the book's ``torch.manual_seed(123)`` before it) and freezing.

    ``trainable="lora"`` freezes everything and adds LoRA adapters (``lora``: a
    :class:`gptclf.lora.LoRAConfig`) instead of unfreezing whole blocks.
    """
    model = backbone.model
    torch.manual_seed(seed)
    replace_head(model, num_classes)
    if trainable == "lora":
        from .lora import freeze_for_lora

        frozen = freeze_for_lora(model, lora)
    else:
        frozen = freeze_for_finetuning(model, trainable)
    return SequenceClassifier(model, pooling, causal=causal, grad_checkpointing=grad_checkpointing), frozen


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


def _cache_mode(cfg: TrainConfig, model: SequenceClassifier, frozen: int, datasets: Sequence[EncodedDataset],
                pad_to: int | None, device: torch.device, log: Callable[[str], None]) -> str:
    """Decide where the trunk cache lives (or that there is none), and say why."""
    if cfg.cache == "off" or frozen == 0:
        return "off"
    if any(getattr(m, "p", 0.0) > 0 for m in model.modules() if isinstance(m, nn.Dropout)) or any(
            getattr(m, "drop_rate", 0.0) > 0 for m in model.modules()):
        log("trunk cache off: dropout is on, so the frozen blocks' output is not fixed")
        return "off"
    need = sum(TrunkCache.nbytes(d, model.config.emb_dim, pad_to) for d in datasets)
    if cfg.cache == "disk":
        return "disk"
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need < 0.5 * free:
            return "ram"
        budget = _available_ram() * 0.5
        return "cpu" if need < budget else "disk"
    budget = cfg.cache_max_gb * 2**30 if cfg.cache_max_gb is not None else _available_ram() * 0.5
    if need <= budget or cfg.cache == "ram":
        return "ram"
    log(f"trunk cache needs {need / 2**30:.1f} GiB, more than {budget / 2**30:.1f} GiB of RAM: "
        "spilling it to disk (use --cache off to recompute instead)")
    return "disk"


def _log_memory_estimate(model: SequenceClassifier, cfg: TrainConfig, frozen: int, max_length: int,
                         datasets: Sequence[EncodedDataset], pad_to: int | None, device: torch.device,
                         log: Callable[[str], None]) -> None:
    """Print what the run will need before it starts, and warn when that exceeds what there is."""
    from .memory import available_memory, estimate_for_model, memory_warning

    uses_cache = cfg.cache != "off" and frozen > 0
    cache_tokens = sum(len(d) * pad_to if pad_to else int(d.lengths.sum()) for d in datasets) if uses_cache else 0
    est = estimate_for_model(model.backbone, frozen, cfg.batch_size, pad_to or max_length,
                             cfg.grad_checkpointing, cache_tokens)
    log(est.describe())
    available, where = available_memory(device)
    warning = memory_warning(est, available, where)
    if warning:
        log(warning)


def run_training(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> Path:
    """``gptclf train``: data, model, fine-tuning, final evaluation, run directory."""
    from .runs import default_run_dir, save_run

    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    cfg = cfg.resolved()
    t_start = time.perf_counter()
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    torch.manual_seed(cfg.seed)
    check_model_name(cfg.model)

    splits = load_splits(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                         label_column=cfg.label_column, balance=cfg.balance, seed=cfg.seed)
    log(f"data: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test, labels {splits.labels}")
    backbone = load_backbone(cfg.model, cfg.init)
    tok = backbone.tokenizer
    ctx = backbone.model.config.context_length
    label_index = {lab: i for i, lab in enumerate(splits.labels)}
    train_ds = encode_examples(tok, [e.text for e in splits.train], [label_index[e.label] for e in splits.train],
                               cfg.max_length, ctx, "train")
    max_length = train_ds.max_length
    val_ds = encode_examples(tok, [e.text for e in splits.val], [label_index[e.label] for e in splits.val],
                             max_length, ctx, "validation")
    test_ds = encode_examples(tok, [e.text for e in splits.test], [label_index[e.label] for e in splits.test],
                              max_length, ctx, "test")
    log(f"model: {cfg.model} ({cfg.init}), max length {max_length} tokens, pad id {tok.pad_id}, "
        f"padding {cfg.padding}, pooling {cfg.pooling}, device {device} ({precision})")

    lora_cfg = cfg.lora_config() if cfg.trainable == "lora" else None
    base_fp = None
    if lora_cfg is not None:
        from .lora import base_fingerprint

        base_fp = base_fingerprint(backbone.model)  # before the head swap and the adapters
    model, frozen = build_classifier(backbone, len(splits.labels), cfg.trainable, cfg.pooling, cfg.seed,
                                     lora=lora_cfg, causal=cfg.causal_mask,
                                     grad_checkpointing=cfg.grad_checkpointing)
    model.to(device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"trainable parameters: {n_trainable:,} of {n_total:,} ({cfg.trainable}; "
        f"{frozen} of {model.config.n_layers} blocks frozen)")
    pad_to = max_length if cfg.padding == "longest" else None
    if lora_cfg is not None and frozen == 0 and cfg.cache != "off":
        log("trunk cache off: LoRA adapters reach block 0, so no block's output is fixed")
    _log_memory_estimate(model, cfg, frozen, max_length, (train_ds, val_ds, test_ds), pad_to, device, log)

    caches: list[TrunkCache] = []
    mode = _cache_mode(cfg, model, frozen, (train_ds, val_ds, test_ds), pad_to, device, log)
    t_cache = time.perf_counter()
    feeds: list[Feeder] = []
    for name, ds in (("train", train_ds), ("validation", val_ds), ("test", test_ds)):
        if mode == "off":
            feeds.append(TokenFeeder(ds, tok.pad_id, pad_to, device))
        else:
            cache = TrunkCache.build(model, ds, frozen, tok.pad_id, pad_to, device, precision,
                                     cfg.eval_batch_size, name, mode="disk" if mode == "disk" else
                                     ("ram" if mode == "ram" else "cpu"), progress=cfg.progress)
            caches.append(cache)
            feeds.append(CachedFeeder(cache, frozen, device))
    cache_seconds = time.perf_counter() - t_cache
    if mode != "off":
        log(f"cached the {frozen} frozen blocks' output for {len(train_ds) + len(val_ds) + len(test_ds)} "
            f"texts in {cache_seconds:.1f}s ({mode})")
    train_feed, val_feed, test_feed = feeds
    if cfg.compile:
        model = torch.compile(model, dynamic=True)  # type: ignore[assignment]
    optimizer = make_optimizer(model, cfg, device)

    try:
        t_train = time.perf_counter()
        history, interrupted = train_classifier(model, optimizer, train_feed, val_feed, train_ds, val_ds,
                                                cfg, device, precision, log)
        train_seconds = time.perf_counter() - t_train
        metrics: dict[str, Any] = {"interrupted": interrupted}
        if not interrupted:
            t_eval = time.perf_counter()
            for name, ds, feed in (("train", train_ds, train_feed), ("val", val_ds, val_feed),
                                   ("test", test_ds, test_feed)):
                probs = predict_probabilities(model, feed, len(ds), cfg.eval_batch_size, ds.lengths,
                                              device, precision)
                y = ds.labels.numpy()
                pred = probs.argmax(1)
                eps = 1e-12
                metrics[f"{name}_accuracy"] = float((pred == y).mean()) if len(y) else float("nan")
                metrics[f"{name}_loss"] = float(-np.log(probs[np.arange(len(y)), y] + eps).mean()) if len(y) else float("nan")
                if name == "test":
                    metrics["test_report"] = classification_report(y, pred, splits.labels, probs)
            metrics["eval_seconds"] = time.perf_counter() - t_eval
            log(f"Training accuracy: {metrics['train_accuracy'] * 100:.2f}% | "
                f"Validation accuracy: {metrics['val_accuracy'] * 100:.2f}% | "
                f"Test accuracy: {metrics['test_accuracy'] * 100:.2f}%")
    finally:
        for c in caches:
            c.close()
    total_seconds = time.perf_counter() - t_start
    metrics.update({
        "n_train": len(train_ds), "n_val": len(val_ds), "n_test": len(test_ds),
        "train_seconds": train_seconds, "cache_seconds": cache_seconds if mode != "off" else 0.0,
        "seconds": total_seconds,
        "train_examples_per_second": sum(e["examples_per_second"] * e["seconds"] for e in history.epochs)
        / max(sum(e["seconds"] for e in history.epochs), 1e-9) if history.epochs else 0.0,
        "trainable_parameters": n_trainable, "total_parameters": n_total,
        "device": str(device), "precision": precision, "trunk_cache": mode,
    })
    model_for_save = getattr(model, "_orig_mod", model)
    tensors = None
    if lora_cfg is not None:
        from .lora import base_reference, can_reload_base, merge_lora, trained_state_dict

        if can_reload_base(backbone.source):
            # Only what trained; config.json names the base model to rebuild the rest from.
            tensors = trained_state_dict(model_for_save)
        else:
            merge_lora(model_for_save.backbone)
            log("the base model was randomly initialised and cannot be rebuilt from its name: "
                "saving the full model with the LoRA adapters merged")
    run_config = {
        "gptclf_version": __version__,
        "labels": splits.labels,
        "max_length": max_length,
        "pad_id": tok.pad_id,
        "pooling": cfg.pooling,
        "padding": cfg.padding,
        "trainable": cfg.trainable,
        "base_model": backbone.source,
        "causal_mask": cfg.causal_mask,
        **({"lora": {**lora_cfg.to_dict(), "base": base_reference(backbone.source),
                     "base_fingerprint": base_fp}} if tensors is not None else {}),
        "data": splits.summary(),
        "train": asdict(cfg),
    }
    out = Path(cfg.out) if cfg.out else default_run_dir()
    save_run(out, model_for_save, tok, run_config, metrics, history, tensors=tensors)
    log(f"saved {'(interrupted) ' if metrics['interrupted'] else ''}run to {out} in {total_seconds:.1f}s")
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return out
