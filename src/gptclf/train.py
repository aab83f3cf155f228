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

Practitioners' controls, all off by default: gradient accumulation, warmup with cosine
or linear decay (:mod:`gptclf.schedule`), gradient clipping, class weights and early
stopping (:mod:`gptclf.controls`), checkpoints and ``--resume`` (:mod:`gptclf.checkpoint`),
and torchrun/DDP processes (:mod:`gptclf.distributed`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (Checkpointer, DeferredInterrupt, data_fingerprint, find_partial,
                         flatten_optimizer_state, iter_state_tensors, load_checkpoint, partial_dir,
                         read_run_info, restore_rng, rng_tensors, unflatten_optimizer_state,
                         write_run_info)
from .classifier import SequenceClassifier, freeze_for_finetuning, replace_head
from .controls import STOPPING_METRICS, EarlyStopping, class_weights, step_loss
from .data import (DataWarning, EncodedDataset, cache_dir, collate, encode_examples, load_splits,
                   round_up, shuffled_batches, sorted_batches)
from .device import autocast, configure_backends, pad_multiple, pick_device, resolve_precision
from .distributed import (DistContext, any_rank, barrier, broadcast_float, broadcast_text,
                          init_distributed, no_sync, shutdown, wrap_ddp)
from .errors import GptclfError
from .memory import available_ram
from .metrics import classification_report, most_confident_mistakes
from .schedule import SCHEDULES, lr_factor, warmup_steps
from .weights import Backbone, check_model_name, load_backbone

DEFAULT_PATIENCE = 3


BOOK_RECIPE: dict[str, Any] = {"trainable": "last_block", "lr": 5e-5}

# Per-backbone defaults for the options a user leaves out, measured on the chapter-6
# split (README "Accuracy" lists every recipe tried). GPT-2 keeps the book's recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"trainable": "last_two_blocks", "lr": 2e-4},
}


def recipe_for(model: str) -> dict[str, Any]:
    """The defaults ``gptclf train --model MODEL`` uses for the options it is not given."""
    return {**BOOK_RECIPE, **RECIPES.get(model.strip().lower(), {})}


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
    lr: float | None = None  # None: the backbone's recipe (RECIPES), else the book's 5e-5
    weight_decay: float = 0.1
    eval_freq: int = 50
    eval_iter: int = 5
    eval_batch_size: int = 64
    trainable: str | None = None  # None: the backbone's recipe (RECIPES), else the book's last_block
    template: str | None = None  # e.g. "Message: {text}\nIs this message spam?"
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
    # Training controls (defaults: off, i.e. the book's loop).
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_schedule: str = "constant"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # of all optimizer steps; alternative to warmup_steps
    clip_grad_norm: float | None = None
    early_stopping_metric: str | None = None  # val_loss | val_accuracy: early stopping + best weights
    patience: int | None = None  # epochs without a gain before stopping (default 3)
    keep_best: bool = False  # save the best epoch's weights (by early_stopping_metric, else val_loss)
    checkpoint_every: int = 500  # optimizer steps between checkpoints (and every epoch end); 0 = none

    def lora_config(self):  # -> lora.LoRAConfig
        from .lora import LoRAConfig, parse_targets

        return LoRAConfig(self.lora_rank, self.lora_alpha, parse_targets(self.lora_targets), self.lora_dropout)

    def resolved(self) -> "TrainConfig":
        """Fill in the backbone's recipe and the choices that depend on ``--reference``."""
        c = TrainConfig(**asdict(self))
        recipe = recipe_for(c.model)
        for name in ("trainable", "lr"):
            if getattr(c, name) is None:
                setattr(c, name, recipe[name])
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
        if c.grad_accum < 1:
            raise GptclfError("--grad-accum must be at least 1")
        if c.lr_schedule not in SCHEDULES:
            raise GptclfError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, not {c.lr_schedule!r}")
        if c.warmup_steps < 0 or not 0 <= c.warmup_ratio < 1:
            raise GptclfError("--warmup-steps must be >= 0 and --warmup-ratio in [0, 1)")
        if c.warmup_steps and c.warmup_ratio:
            raise GptclfError("give --warmup-steps or --warmup-ratio, not both")
        if c.clip_grad_norm is not None and not c.clip_grad_norm > 0:
            raise GptclfError("--clip-grad-norm must be positive")
        if c.early_stopping_metric is not None and c.early_stopping_metric not in STOPPING_METRICS:
            raise GptclfError(f"--early-stopping-metric must be one of {', '.join(STOPPING_METRICS)}, "
                              f"not {c.early_stopping_metric!r}")
        if c.patience is not None:
            if c.early_stopping_metric is None:
                raise GptclfError("--patience needs --early-stopping-metric val_loss or val_accuracy")
            if c.patience < 1:
                raise GptclfError("--patience must be at least 1")
        if c.checkpoint_every < 0:
            raise GptclfError("--checkpoint-every must be >= 0 (0: no checkpoints)")
        if c.max_length is not None and c.max_length < 1:
            raise GptclfError(f"--max-length must be at least 1 token, not {c.max_length}")
        if c.trainable == "lora":
            c.lora_config()  # fail fast on a bad rank/alpha/dropout, before any data is read
        return c

    def stopper(self) -> EarlyStopping | None:
        """The early-stopping / best-weights tracker these options ask for, if any."""
        if self.early_stopping_metric is not None:
            return EarlyStopping(self.early_stopping_metric,
                                 self.patience if self.patience is not None else DEFAULT_PATIENCE)
        if self.keep_best:
            return EarlyStopping("val_loss", None)
        return None


# ------------------------------------------------------------------------ trunk cache


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
            ids, lens = collate([ds.ids[i] for i in idx], pad_id, pad_to, pad_multiple(device))
            with autocast(device, precision):
                h = model.trunk(ids.to(device, non_blocking=True), end, lens.to(device)).float()
            h = h.to(storage.device)
            for j, i in enumerate(idx):
                n = int(row_lengths[i])
                storage[offsets[i]: offsets[i] + n] = h[j, :n]
            bar.update(len(idx))
        bar.close()
        return cls(storage, offsets, row_lengths, torch.as_tensor(lengths), spill_dir, fixed_width=bool(pad_to))

    def batch(self, idx: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(self.row_lengths[list(idx)].max())
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

    def close(self) -> None:
        self.storage = torch.empty(0)
        if self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


# -------------------------------------------------------------------------- feeders


class TokenFeeder:
    """Runs whole texts through the whole model (no cache)."""

    def __init__(self, ds: EncodedDataset, pad_id: int, pad_to: int | None, device: torch.device) -> None:
        self.ds, self.pad_id, self.pad_to, self.device = ds, pad_id, pad_to, device
        self.multiple = pad_multiple(device)

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        ids, lengths = collate([self.ds.ids[i] for i in idx], self.pad_id, self.pad_to, self.multiple)
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
                     precision: str, log: Callable[[str], None], *,
                     dist: DistContext | None = None, checkpointer: Checkpointer | None = None,
                     stopper: EarlyStopping | None = None, class_weight: torch.Tensor | None = None,
                     resume: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
                     ) -> tuple[History, bool]:
    """The book's ``train_classifier_simple``: returns the history and whether it was interrupted.

    Around it, all off by default: gradient accumulation, a learning-rate schedule,
    gradient clipping, class weights, early stopping on the full validation set at each
    epoch end (``stopper``), checkpoints (``checkpointer``) and resuming from one
    (``resume``), and data-parallel processes (``dist``).
    """
    dist = dist or DistContext()
    bare = getattr(model, "_orig_mod", model)  # names without torch.compile's prefix
    history = History()
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    train_y = train_ds.labels.to(device)
    weight = class_weight.to(device) if class_weight is not None else None
    lengths = train_ds.lengths
    # One micro-batch is batch_size examples on each process; an optimizer step takes
    # grad_accum of them. Leftover micro-batches of an epoch are dropped, as the book's
    # drop_last drops a short batch. The loss estimates use the global micro-batch size
    # too, so N processes log what one process with an N times larger batch logs.
    global_batch = cfg.batch_size * dist.world_size
    val_batches = [list(range(i, min(i + global_batch, len(val_ds))))
                   for i in range(0, len(val_ds), global_batch)][: cfg.eval_iter]
    full_val_batches = sorted_batches(val_ds.lengths, cfg.eval_batch_size)

    def eval_batches() -> list[list[int]]:
        return shuffled_batches(len(train_ds), global_batch, eval_gen)[: cfg.eval_iter]

    accum = cfg.grad_accum
    steps_per_epoch = len(train_ds) // global_batch // accum
    if steps_per_epoch == 0:
        raise GptclfError(
            f"the training split has {len(train_ds)} examples, fewer than one optimizer step "
            f"(batch size {cfg.batch_size} x grad accumulation {accum} x {dist.world_size} process(es))",
            hint="lower --batch-size or --grad-accum, or add training data")
    total_steps = steps_per_epoch * cfg.epochs
    warmup = warmup_steps(total_steps, cfg.warmup_steps, cfg.warmup_ratio)
    scheduled = cfg.lr_schedule != "constant" or warmup > 0
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    trainable = [p for p in model.parameters() if p.requires_grad]

    examples_seen, global_step = 0, -1
    start_epoch, start_batch = 0, 0
    if resume is not None:
        state, tensors = resume
        params = dict(bare.named_parameters())
        with torch.no_grad():
            for name, value in iter_state_tensors("param.", tensors):
                params[name].copy_(value)
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(unflatten_optimizer_state(state["optimizer"], optim_tensors))
        shuffle_gen.set_state(tensors["rng.shuffle"])  # as it was when the epoch began
        eval_gen.set_state(tensors["rng.eval"])
        restore_rng(tensors, device)
        history = History(**state["history"])
        examples_seen, global_step = state["examples_seen"], state["global_step"]
        start_epoch, start_batch = state["epoch"], state["batch"]
        if stopper is not None and state.get("early_stopping"):
            stopper.load_state(state["early_stopping"], dict(iter_state_tensors("best.", tensors)))
        log(f"resumed at epoch {start_epoch + 1}, batch {start_batch}, step {global_step + 1}")
    # DDP copies rank 0's weights to every rank when it wraps: after the resume, so all agree.
    ddp = wrap_ddp(model, dist, device) if dist.world_size > 1 else None
    last_saved: tuple[int, int] | None = None

    def snapshot(epoch: int, batch: int, epoch_gen_state: torch.Tensor) -> None:
        """A checkpoint from which training continues at ``batch`` of ``epoch`` (0-based)."""
        nonlocal last_saved
        if checkpointer is None or not checkpointer.enabled or not dist.is_main or last_saved == (epoch, batch):
            return
        optim_tensors, optim_structure = flatten_optimizer_state(optimizer.state_dict())
        tensors = {f"param.{n}": p for n, p in bare.named_parameters() if p.requires_grad}
        tensors.update(optim_tensors)
        tensors.update(rng_tensors(device))
        tensors["rng.shuffle"] = epoch_gen_state
        tensors["rng.eval"] = eval_gen.get_state()
        if stopper is not None:
            tensors.update({f"best.{n}": v for n, v in stopper.best_state.items()})
        checkpointer.save(tensors, {
            "epoch": epoch, "batch": batch, "global_step": global_step, "examples_seen": examples_seen,
            "world_size": dist.world_size, "history": asdict(history), "optimizer": optim_structure,
            "early_stopping": stopper.state() if stopper is not None else None})
        last_saved = (epoch, batch)

    stopped = stopper is not None and stopper.stopped_epoch is not None
    model.train()
    with DeferredInterrupt() as sigint:
        for epoch in range(start_epoch, cfg.epochs):
            if stopped:
                break
            epoch_gen_state = shuffle_gen.get_state()
            batches = shuffled_batches(len(train_ds), global_batch, shuffle_gen, drop_last=True,
                                       lengths=lengths, group_size=cfg.group_by_length)
            batches = batches[: steps_per_epoch * accum]
            first = start_batch if epoch == start_epoch else 0
            bar = tqdm(total=steps_per_epoch, initial=first // accum, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step" if accum > 1 else "batch", disable=not cfg.progress or not dist.is_main,
                       leave=False, dynamic_ncols=True)
            t0, seen0 = time.perf_counter(), examples_seen
            try:
                for b in range(first, len(batches), accum):
                    group = batches[b: b + accum]
                    flat = [i for g in group for i in g]
                    # The whole step's example count (or class weight) divides each micro-batch's loss.
                    total = float(len(flat)) if weight is None else float(class_weight[train_ds.labels[flat]].double().sum())
                    optimizer.zero_grad(set_to_none=True)
                    step_loss_sum = torch.zeros((), device=device)
                    for j, global_idx in enumerate(group):
                        idx = dist.shard(global_idx) if dist.world_size > 1 else global_idx
                        with no_sync(ddp, j < len(group) - 1):
                            with autocast(device, precision):
                                logits = ddp(train_feed, idx) if ddp is not None else train_feed(model, idx)
                            loss = step_loss(logits.float(), train_y[idx], weight, total, dist.world_size)
                            loss.backward()
                        step_loss_sum += loss.detach()
                    if cfg.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
                    if scheduled:
                        factor = lr_factor(global_step + 1, total_steps, warmup, cfg.lr_schedule)
                        for g, base in zip(optimizer.param_groups, base_lrs):
                            g["lr"] = base * factor
                    optimizer.step()
                    examples_seen += len(flat)
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
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss_sum.item():.3f}", ex_s=f"{rate:.1f}")
                    next_batch = b + accum
                    if checkpointer is not None and checkpointer.due(global_step) and next_batch < len(batches):
                        snapshot(epoch, next_batch, epoch_gen_state)
                    if any_rank(sigint.requested, dist):
                        bar.close()
                        snapshot(epoch, next_batch, epoch_gen_state)
                        log(f"interrupted in epoch {epoch + 1} after step {global_step}"
                            + (" (checkpoint written)" if last_saved == (epoch, next_batch) else ""))
                        return history, True
            except KeyboardInterrupt:  # a second Ctrl-C: stop now, the last checkpoint stays
                bar.close()
                log(f"interrupted in epoch {epoch + 1} at step {global_step}")
                return history, True
            bar.close()
            _, train_acc = calc_loss_and_accuracy(model, train_feed, train_ds.labels, eval_batches(),
                                                  device, precision)
            _, val_acc = calc_loss_and_accuracy(model, val_feed, val_ds.labels, val_batches, device, precision)
            seconds = time.perf_counter() - t0
            entry = {"epoch": epoch + 1, "examples_seen": examples_seen,
                     "train_accuracy": train_acc, "val_accuracy": val_acc,
                     "seconds": seconds, "examples_per_second": (examples_seen - seen0) / seconds}
            log(f"Training accuracy: {train_acc * 100:.2f}% | Validation accuracy: {val_acc * 100:.2f}% "
                f"| {(examples_seen - seen0) / seconds:.1f} examples/s")
            if stopper is not None:
                # The book's epoch accuracies use eval_iter batches; choosing the best epoch
                # deserves the whole validation set.
                full_loss, full_acc = calc_loss_and_accuracy(model, val_feed, val_ds.labels, full_val_batches,
                                                             device, precision)
                entry.update(full_val_loss=full_loss, full_val_accuracy=full_acc)
                value = broadcast_float(full_loss if stopper.metric == "val_loss" else full_acc, dist)
                stopped = stopper.update(epoch + 1, value, bare)
                log(f"full validation set: loss {full_loss:.4f}, accuracy {full_acc * 100:.2f}% | best "
                    f"{stopper.metric} {stopper.best_value:.4f} at epoch {stopper.best_epoch}"
                    + (f" | stopping early: no gain for {stopper.patience} epoch(s)" if stopped else ""))
            history.epochs.append(entry)
            snapshot(epoch + 1, 0, shuffle_gen.get_state())
            if any_rank(sigint.requested, dist):
                log(f"interrupted at the end of epoch {epoch + 1}")
                return history, True
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
        budget = available_ram() * 0.5
        return "cpu" if need < budget else "disk"
    budget = cfg.cache_max_gb * 2**30 if cfg.cache_max_gb is not None else available_ram() * 0.5
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


def run_training(cfg: TrainConfig, log: Callable[[str], None] | None = None, *,
                 resume_from: str | Path | None = None) -> Path:
    """``gptclf train``: data, model, fine-tuning, final evaluation, run directory.

    Under torchrun (``WORLD_SIZE`` > 1) every process runs this; rank 0 logs, writes the
    checkpoints and saves the run. ``resume_from`` is a checkpoint directory
    (``<out>.partial``): see :func:`resume_training`.
    """
    ctx, dist_device = init_distributed(cfg.device)
    try:
        return _run_training(cfg, log, ctx, dist_device, Path(resume_from) if resume_from else None)
    finally:
        shutdown(ctx)


def resume_training(run: str | Path, log: Callable[[str], None] | None = None,
                    progress: bool = True) -> Path:
    """Continue an interrupted run with the options it was started with (saved in its checkpoint)."""
    directory = find_partial(run)
    cfg = saved_config(directory)
    cfg.progress = progress
    return run_training(cfg, log, resume_from=directory)


def saved_config(run: str | Path) -> TrainConfig:
    """The options an unfinished run was started with (``run`` or ``run.partial``)."""
    directory = find_partial(run)
    saved = read_run_info(directory)["train"]
    known = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def _check_out(out: Path, resuming: bool) -> None:
    partial = partial_dir(out)
    if resuming:
        metrics = out / "metrics.json"
        if metrics.exists() and not json.loads(metrics.read_text()).get("interrupted", False):
            raise GptclfError(f"{out} is already a finished run, but {partial} is still there",
                              hint=f"nothing to resume: delete {partial}")
        return
    if out.exists() and any(out.iterdir()):
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
    if partial.exists():
        raise GptclfError(f"{partial} holds the checkpoints of an unfinished run to {out}",
                          hint=f"continue it with 'gptclf train --resume {out}', or delete {partial}")


def _run_training(cfg: TrainConfig, log: Callable[[str], None] | None, ctx: DistContext,
                  dist_device: torch.device | None, resume_from: Path | None) -> Path:
    from .runs import default_run_dir, save_run

    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    options = asdict(cfg)  # as given: what a resumed run starts again with
    cfg = cfg.resolved()
    if not ctx.is_main:
        log = lambda s: None  # noqa: E731 - one voice: rank 0's
        cfg.progress = False
        warnings.simplefilter("ignore", DataWarning)
    t_start = time.perf_counter()
    device = dist_device or pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    torch.manual_seed(cfg.seed)
    check_model_name(cfg.model)

    if resume_from is not None:
        info = read_run_info(resume_from)
        out = Path(info["out"])
        if info.get("world_size", 1) != ctx.world_size:
            raise GptclfError(f"this run was started on {info.get('world_size', 1)} process(es), "
                              f"not {ctx.world_size}: its batches depend on it",
                              hint=f"resume with torchrun --nproc_per_node {info.get('world_size', 1)}"
                              if info.get("world_size", 1) > 1 else "resume without torchrun")
    else:
        out = Path(broadcast_text(str(Path(cfg.out) if cfg.out else default_run_dir()), ctx))
    _check_out(out, resume_from is not None)
    barrier(ctx)  # every rank checks before rank 0 creates <out>.partial
    checkpointer = Checkpointer(partial_dir(out), cfg.checkpoint_every, enabled=ctx.is_main)

    splits = load_splits(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                         label_column=cfg.label_column, balance=cfg.balance, seed=cfg.seed)
    log(f"data: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test, labels {splits.labels}")
    backbone = load_backbone(cfg.model, cfg.init)
    tok = backbone.tokenizer
    ctx_len = backbone.model.config.context_length
    label_index = {lab: i for i, lab in enumerate(splits.labels)}
    train_ds = encode_examples(tok, [e.text for e in splits.train], [label_index[e.label] for e in splits.train],
                               cfg.max_length, ctx_len, "train", cfg.template)
    max_length = train_ds.max_length
    val_ds = encode_examples(tok, [e.text for e in splits.val], [label_index[e.label] for e in splits.val],
                             max_length, ctx_len, "validation", cfg.template)
    test_ds = encode_examples(tok, [e.text for e in splits.test], [label_index[e.label] for e in splits.test],
                              max_length, ctx_len, "test", cfg.template)
    log(f"model: {cfg.model} ({cfg.init}), max length {max_length} tokens, pad id {tok.pad_id}, "
        f"padding {cfg.padding}, pooling {cfg.pooling}, device {device} ({precision})"
        + (f", {ctx.world_size} processes" if ctx.world_size > 1 else ""))

    fingerprint = data_fingerprint(train_ds, val_ds, test_ds)
    resume = None
    if resume_from is not None:
        if info.get("data_fingerprint") != fingerprint:
            raise GptclfError(f"the data differs from the data the run in {resume_from} started with",
                              hint="resume with the same data files (and model), or start a new run")
        resume = load_checkpoint(resume_from)
        if resume is None:
            log(f"{resume_from} has no checkpoint yet: starting the run again from the beginning")
    elif checkpointer.enabled:
        where = str(out.resolve())  # absolute: --resume may run from another directory
        write_run_info(checkpointer.directory, {
            "gptclf_version": __version__, "out": where, "world_size": ctx.world_size,
            "data_fingerprint": fingerprint, "train": {**options, "out": where}})

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
    class_weight = class_weights(train_ds.labels, len(splits.labels)) if cfg.balance == "weight" else None
    if class_weight is not None:
        log("class weights (inverse frequency): " + ", ".join(
            f"{lab} {w:.3f}" for lab, w in zip(splits.labels, class_weight.tolist())))
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
    stopper = cfg.stopper()
    model_for_save = getattr(model, "_orig_mod", model)

    metrics: dict[str, Any] = {}
    try:
        t_train = time.perf_counter()
        history, interrupted = train_classifier(model, optimizer, train_feed, val_feed, train_ds, val_ds,
                                                cfg, device, precision, log, dist=ctx,
                                                checkpointer=checkpointer, stopper=stopper,
                                                class_weight=class_weight, resume=resume)
        train_seconds = time.perf_counter() - t_train
        metrics["interrupted"] = interrupted
        if stopper is not None and stopper.best_epoch is not None:
            metrics["best_epoch"] = stopper.best_epoch
            metrics["early_stopping"] = stopper.state()
            if not interrupted:
                stopper.restore_best(model_for_save)
                log(f"keeping the weights of epoch {stopper.best_epoch} (best {stopper.metric} "
                    f"{stopper.best_value:.4f})")
        if resume is not None:
            metrics["resumed_at_step"] = resume[0]["global_step"] + 1
        if class_weight is not None:
            metrics["class_weights"] = dict(zip(splits.labels, class_weight.tolist()))
        if not interrupted and ctx.is_main:
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
                # Per-class P/R/F1, confusion matrix, ROC-AUC (binary): the run report's tables.
                metrics[f"{name}_report"] = classification_report(y, pred, splits.labels, probs)
                if name == "test":
                    metrics["test_mistakes"] = most_confident_mistakes(
                        [e.text for e in splits.test], y, probs, splits.labels, k=10)
            metrics["eval_seconds"] = time.perf_counter() - t_eval
            log(f"Training accuracy: {metrics['train_accuracy'] * 100:.2f}% | "
                f"Validation accuracy: {metrics['val_accuracy'] * 100:.2f}% | "
                f"Test accuracy: {metrics['test_accuracy'] * 100:.2f}%")
    finally:
        for c in caches:
            c.close()
    if ctx.is_main:
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
        if ctx.world_size > 1:
            metrics["world_size"] = ctx.world_size
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
            "template": cfg.template,
            "trainable": cfg.trainable,
            "base_model": backbone.source,
            "causal_mask": cfg.causal_mask,
            **({"lora": {**lora_cfg.to_dict(), "base": base_reference(backbone.source),
                         "base_fingerprint": base_fp}} if tensors is not None else {}),
            "data": splits.summary(),
            "train": asdict(cfg),
        }
        save_run(out, model_for_save, tok, run_config, metrics, history,
                 replace_interrupted=resume_from is not None, tensors=tensors)
        if interrupted:
            log(f"saved (interrupted) run to {out} in {total_seconds:.1f}s"
                + (f"; continue it with: gptclf train --resume {out}" if (checkpointer.directory / "checkpoint.json").exists() else ""))
        else:
            checkpointer.remove()  # the finished run replaces its checkpoints
            log(f"saved run to {out} in {total_seconds:.1f}s")
    barrier(ctx)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return out
