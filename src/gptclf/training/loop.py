"""The book's ``train_classifier_simple``, made reliable: :class:`Trainer`.

Each optimizer step is the book's: zero the gradients, cross-entropy of the last-token
logits, backward, step. Around it, all off by default: gradient accumulation, a
learning-rate schedule, gradient clipping, class weights, early stopping on the full
validation set at each epoch end, checkpoints and resuming from one, and data-parallel
processes. Every ``eval_freq`` steps the losses are estimated on ``eval_iter`` batches
and at each epoch end the accuracies, as the book does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..progress import PlainProgress

from ..config import TrainConfig
from ..data.batching import shuffled_batches, sorted_batches
from ..data.encoding import EncodedDataset
from ..device import autocast
from ..errors import GptclfError
from ..graphs import Shapes
from ..models.classifier import SequenceClassifier
from .controls import EarlyStopping
from .distributed import DistContext, any_rank, broadcast_float, no_sync, wrap_ddp
from .evaluate import calc_loss_and_accuracy, loss_accuracy_and_right
from .schedule import lr_factor, warmup_steps
from .state import (Checkpointer, DeferredInterrupt, flatten_optimizer_state, iter_state_tensors, restore_rng,
                    rng_tensors, unflatten_optimizer_state)
from .static_step import StaticTrainStep
from .trunk_cache import Feeder


@dataclass
class History:
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``train_feed``; :meth:`fit` returns the history and whether it was interrupted."""

    def __init__(self, model: SequenceClassifier, optimizer: torch.optim.Optimizer, train_feed: Feeder,
                 val_feed: Feeder, train_ds: EncodedDataset, val_ds: EncodedDataset, cfg: TrainConfig,
                 device: torch.device, precision: str, log: Callable[[str], None], *,
                 dist: DistContext | None = None, checkpointer: Checkpointer | None = None,
                 stopper: EarlyStopping | None = None, class_weight: torch.Tensor | None = None,
                 shapes: Shapes | None = None, on_record: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.model, self.optimizer, self.cfg, self.device, self.precision, self.log = (
            model, optimizer, cfg, device, precision, log)
        self.train_feed, self.val_feed, self.train_ds, self.val_ds = train_feed, val_feed, train_ds, val_ds
        self.dist = dist or DistContext()
        # on_record is told each record history keeps, with the learning rate and speed (--report-to).
        self.checkpointer, self.stopper, self.class_weight, self.on_record = checkpointer, stopper, class_weight, on_record
        self.bare = getattr(model, "_orig_mod", model)  # names without torch.compile's prefix
        self.history = History()
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.train_y = train_ds.labels.to(device)
        # The loop's "accuracy" (history, best epoch, early stopping) is the task's score: a
        # multi-label run's micro-F1 at threshold 0.5, what the history's *_accuracy keys then hold.
        self.task = cfg.target_task
        self.score_name = self.task.score_name
        self.weight = class_weight.to(device) if class_weight is not None else None
        # One micro-batch is batch_size examples on each process; an optimizer step takes
        # grad_accum of them. Leftover micro-batches of an epoch are dropped, as the book's
        # drop_last drops a short batch. The loss estimates use the global micro-batch size
        # too, so N processes log what one process with an N times larger batch logs.
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.val_batches = [list(range(i, min(i + self.global_batch, len(val_ds))))
                            for i in range(0, len(val_ds), self.global_batch)][: cfg.eval_iter]
        self.full_val_batches = sorted_batches(val_ds.lengths, cfg.eval_batch_size)
        self.steps_per_epoch = len(train_ds) // self.global_batch // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise GptclfError(
                f"the training split has {len(train_ds)} examples, fewer than one optimizer step "
                f"(batch size {cfg.batch_size} x grad accumulation {cfg.grad_accum} x "
                f"{self.dist.world_size} process(es))", hint="lower --batch-size or --grad-accum, or add training data")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = warmup_steps(self.total_steps, cfg.warmup_steps, cfg.warmup_ratio)
        self.scheduled = cfg.lr_schedule != "constant" or self.warmup > 0
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.examples_seen, self.global_step = 0, -1
        self.start_epoch, self.start_batch = 0, 0
        self.last_saved: tuple[int, int] | None = None
        self.ddp: Any = None
        # --static-shapes: the step's forward and backward on fixed buffers (CUDA graphs on a GPU).
        self.static_step = None if shapes is None else StaticTrainStep(
            model, train_feed.forward, self.trainable, self.weight, device, shapes,  # type: ignore[attr-defined]
            self.task.static_loss)

    # ------------------------------------------------------------------ resume

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint (:mod:`gptclf.training.state`): weights, optimizer, RNGs, position.

        ``load_checkpoint`` checked the JSON fields' types; what only this run can check
        (names, shapes, the position in this run's epochs) is checked here, and anything
        that still does not fit is a clear error rather than a traceback."""
        try:
            self._check_resume_point(state, tensors)
            self._restore(state, tensors)
        except GptclfError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise GptclfError(f"the checkpoint does not fit this run ({type(e).__name__}: {str(e)[:200]})",
                              hint="the checkpoint is damaged: start again with --overwrite") from None

    def _check_resume_point(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.bare.named_parameters() if p.requires_grad}
        saved = dict(iter_state_tensors("param.", tensors))
        wrong = sorted(set(params) ^ set(saved)) + sorted(
            n for n in set(params) & set(saved) if saved[n].shape != params[n].shape or not saved[n].is_floating_point()
            or not bool(torch.isfinite(saved[n]).all()))
        if wrong:
            raise GptclfError(f"the checkpoint's trained weights do not match this model: {wrong[:3]}",
                              hint="the checkpoint is damaged: start again with --overwrite")
        batches = self.steps_per_epoch * self.cfg.grad_accum
        if state["epoch"] > self.cfg.epochs or state["batch"] > batches or \
                state["global_step"] >= self.total_steps or state["examples_seen"] > self.total_steps * \
                self.global_batch * self.cfg.grad_accum:
            raise GptclfError(f"the checkpoint's position (epoch {state['epoch']}, batch {state['batch']}, step "
                              f"{state['global_step']}) is outside this run's {self.cfg.epochs} epoch(s) of "
                              f"{batches} batches", hint="the checkpoint is damaged: start again with --overwrite")
        for key in ("rng.shuffle", "rng.eval", "rng.torch"):
            if key not in tensors or tensors[key].dtype != torch.uint8:
                raise GptclfError(f"the checkpoint lacks a valid random-generator state ({key})",
                                  hint="the checkpoint is damaged: start again with --overwrite")

    def _restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self.bare.named_parameters())
        with torch.no_grad():
            for name, value in iter_state_tensors("param.", tensors):
                params[name].copy_(value)
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        self.optimizer.load_state_dict(unflatten_optimizer_state(state["optimizer"], optim_tensors))
        self.shuffle_gen.set_state(tensors["rng.shuffle"])  # as it was when the epoch began
        self.eval_gen.set_state(tensors["rng.eval"])
        restore_rng(tensors, self.device)
        self.history = History(**state["history"])
        self.examples_seen, self.global_step = state["examples_seen"], state["global_step"]
        self.start_epoch, self.start_batch = state["epoch"], state["batch"]
        if self.stopper is not None and state.get("early_stopping"):
            self.stopper.load_state(state["early_stopping"], dict(iter_state_tensors("best.", tensors)))
        self.log(f"resumed at epoch {self.start_epoch + 1}, batch {self.start_batch}, step {self.global_step + 1}")

    def snapshot(self, epoch: int, batch: int, epoch_gen_state: torch.Tensor) -> None:
        """A checkpoint from which training continues at ``batch`` of ``epoch`` (0-based)."""
        ck = self.checkpointer
        if ck is None or not ck.enabled or not self.dist.is_main or self.last_saved == (epoch, batch):
            return
        self.check_finite()
        optim_tensors, optim_structure = flatten_optimizer_state(self.optimizer.state_dict())
        tensors = {f"param.{n}": p for n, p in self.bare.named_parameters() if p.requires_grad}
        tensors.update(optim_tensors)
        tensors.update(rng_tensors(self.device))
        tensors["rng.shuffle"] = epoch_gen_state
        tensors["rng.eval"] = self.eval_gen.get_state()
        if self.stopper is not None:
            tensors.update({f"best.{n}": v for n, v in self.stopper.best_state.items()})
        ck.save(tensors, {
            "epoch": epoch, "batch": batch, "global_step": self.global_step, "examples_seen": self.examples_seen,
            "world_size": self.dist.world_size, "history": asdict(self.history), "optimizer": optim_structure,
            "early_stopping": self.stopper.state() if self.stopper is not None else None})
        self.last_saved = (epoch, batch)

    # ------------------------------------------------------------------ training

    def fit(self, until: int | None = None) -> tuple[History, bool]:
        """Train to the end (or, with ``until``, through that many epochs: a later call
        continues exactly where this one stopped, as ``gptclf tune`` does between rungs)."""
        until = self.cfg.epochs if until is None else min(until, self.cfg.epochs)
        # DDP copies rank 0's weights to every rank when it wraps: after a resume, so all agree.
        if self.ddp is None and self.dist.world_size > 1:
            self.ddp = wrap_ddp(self.model, self.dist, self.device)
        stopped = self.stopped
        self.model.train()
        with DeferredInterrupt() as sigint:
            for epoch in range(self.start_epoch, until):
                if stopped:
                    break
                if self._epoch(epoch, sigint):
                    return self.history, True
                stopped = self._end_epoch(epoch)
                self.start_epoch, self.start_batch = epoch + 1, 0
                self.snapshot(epoch + 1, 0, self.shuffle_gen.get_state())
                if any_rank(sigint.requested, self.dist):
                    self.log(f"interrupted at the end of epoch {epoch + 1}")
                    return self.history, True
        self.check_finite()
        return self.history, False

    @property
    def stopped(self) -> bool:
        """Early stopping has ended training."""
        return self.stopper is not None and self.stopper.stopped_epoch is not None

    @property
    def finished(self) -> bool:
        return self.stopped or self.start_epoch >= self.cfg.epochs

    def _epoch(self, epoch: int, sigint: DeferredInterrupt) -> bool:
        """One pass over the training split; True when interrupted."""
        cfg, accum = self.cfg, self.cfg.grad_accum
        epoch_gen_state = self.shuffle_gen.get_state()
        batches = shuffled_batches(len(self.train_ds), self.global_batch, self.shuffle_gen, drop_last=True,
                                   lengths=self.train_ds.lengths, group_size=cfg.group_by_length)
        batches = batches[: self.steps_per_epoch * accum]
        first = self.start_batch if epoch == self.start_epoch else 0
        bar = tqdm(total=self.steps_per_epoch, initial=first // accum, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step" if accum > 1 else "batch", disable=not cfg.progress or not self.dist.is_main,
                   leave=False, dynamic_ncols=True)
        self._t0, self._seen0 = time.perf_counter(), self.examples_seen
        lines = PlainProgress(f"train: epoch {epoch + 1}/{cfg.epochs}", self.steps_per_epoch,
                              "step" if accum > 1 else "batch", self.log, initial=first // accum,
                              enabled=not cfg.progress and self.dist.is_main)
        try:
            for b in range(first, len(batches), accum):
                loss = self._step(batches[b: b + accum])
                if self.global_step % cfg.eval_freq == 0:
                    self._estimate_losses(epoch)
                rate = (self.examples_seen - self._seen0) / max(time.perf_counter() - self._t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{rate:.1f}")
                lines.update(1, sum(len(g) for g in batches[b: b + accum]))
                next_batch = b + accum
                if self.checkpointer is not None and self.checkpointer.due(self.global_step) \
                        and next_batch < len(batches):
                    self.snapshot(epoch, next_batch, epoch_gen_state)
                if any_rank(sigint.requested, self.dist):
                    bar.close()
                    self.snapshot(epoch, next_batch, epoch_gen_state)
                    self.log(f"interrupted in epoch {epoch + 1} after step {self.global_step}"
                             + (" (checkpoint written)" if self.last_saved == (epoch, next_batch) else ""))
                    return True
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, the last checkpoint stays
            bar.close()
            self.log(f"interrupted in epoch {epoch + 1} at step {self.global_step}")
            return True
        bar.close()
        return False

    def _step(self, group: list[list[int]]) -> float:
        """One optimizer step over ``group`` (its micro-batches); returns the step's loss."""
        flat = [i for g in group for i in g]
        # The whole step's example count (or class weight) divides each micro-batch's loss.
        total = self.task.step_total(self.train_ds.labels[flat], self.class_weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.static_step is not None:  # one process, one micro-batch (training_shapes checked)
            idx = group[0]
            loss_sum = self.static_step(*self.train_feed.inputs(idx), self.train_ds.labels[idx],  # type: ignore[attr-defined]
                                        torch.tensor(1.0 / total, dtype=torch.float32))
        else:
            loss_sum = self._forward_backward(group, total)
        value = loss_sum.item()
        if any_rank(not math.isfinite(value), self.dist):
            # Stop before the step spoils the weights; the last checkpoint stays as it was.
            raise self._diverged(f"the training loss is {value}")
        if self.cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.clip_grad_norm)
        if self.scheduled:
            factor = lr_factor(self.global_step + 1, self.total_steps, self.warmup, self.cfg.lr_schedule)
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * factor
        self.optimizer.step()
        self.examples_seen += len(flat)
        self.global_step += 1
        return value

    def _forward_backward(self, group: list[list[int]], total: float) -> torch.Tensor:
        """The eager step's forward and backward over its micro-batches; returns the summed loss."""
        loss_sum = torch.zeros((), device=self.device)
        for j, global_idx in enumerate(group):
            idx = self.dist.shard(global_idx) if self.dist.world_size > 1 else global_idx
            with no_sync(self.ddp, j < len(group) - 1):
                with autocast(self.device, self.precision):
                    logits = self.ddp(self.train_feed, idx) if self.ddp is not None else \
                        self.train_feed(self.model, idx)
                loss = self.task.step_loss(logits.float(), self.train_y[idx], self.weight, total, self.dist.world_size)
                loss.backward()
            loss_sum += loss.detach()
        return loss_sum

    def _diverged(self, what: str) -> GptclfError:
        return GptclfError(f"training diverged at step {self.global_step + 1}: {what}; no model was saved "
                           "(an earlier checkpoint, if any, is kept)",
                           hint=f"lower --lr (this run used {self.cfg.lr:g}) or add --clip-grad-norm 1.0, "
                                "then rerun with --overwrite")

    def check_finite(self) -> None:
        """Refuse to save (a checkpoint or the model) weights that are not all finite: a loss
        can stay finite for the one step that blows the weights up."""
        # Not collective: data-parallel ranks hold the same weights, so they all agree.
        if any(not bool(torch.isfinite(p).all()) for p in self.trainable):
            raise self._diverged("some trained weights are not finite")

    def _eval_batches(self) -> list[list[int]]:
        return shuffled_batches(len(self.train_ds), self.global_batch, self.eval_gen)[: self.cfg.eval_iter]

    def _loss_and_accuracy(self, feed: Feeder, labels: torch.Tensor, batches: list[list[int]]) -> tuple[float, float]:
        return calc_loss_and_accuracy(self.model, feed, labels, batches, self.device, self.precision, self.task)

    def _estimate_losses(self, epoch: int) -> None:
        """The book's ``evaluate_model``: losses on ``eval_iter`` batches of each split."""
        train_loss, _ = self._loss_and_accuracy(self.train_feed, self.train_ds.labels, self._eval_batches())
        val_loss, _ = self._loss_and_accuracy(self.val_feed, self.val_ds.labels, self.val_batches)
        self.history.steps.append({"step": self.global_step, "epoch": epoch + 1, "examples_seen": self.examples_seen,
                                   "train_loss": train_loss, "val_loss": val_loss})
        self.log(f"Ep {epoch + 1} (Step {self.global_step:06d}): "
                 f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        rate = (self.examples_seen - self._seen0) / max(time.perf_counter() - self._t0, 1e-9)
        self._record("step", {**self.history.steps[-1], "examples_per_second": rate})

    def _end_epoch(self, epoch: int) -> bool:
        """The epoch's accuracies (and early stopping); True when training should stop."""
        _, train_acc = self._loss_and_accuracy(self.train_feed, self.train_ds.labels, self._eval_batches())
        _, val_acc = self._loss_and_accuracy(self.val_feed, self.val_ds.labels, self.val_batches)
        seconds = time.perf_counter() - self._t0
        rate = (self.examples_seen - self._seen0) / seconds
        entry = {"epoch": epoch + 1, "examples_seen": self.examples_seen, "train_accuracy": train_acc,
                 "val_accuracy": val_acc, "seconds": seconds, "examples_per_second": rate}
        self.log(f"Training {self.score_name}: {train_acc * 100:.2f}% | Validation {self.score_name}: {val_acc * 100:.2f}% "
                 f"| {rate:.1f} examples/s")
        stopped = False
        if self.stopper is not None:
            stopped = self._track_best(epoch, entry)
        self.history.epochs.append(entry)
        self._record("epoch", {**entry, "step": self.global_step})
        return stopped

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        if self.on_record is not None:
            self.on_record(kind, {**entry, "lr": self.optimizer.param_groups[0]["lr"]})

    def _track_best(self, epoch: int, entry: dict[str, float]) -> bool:
        # The book's epoch accuracies use eval_iter batches; choosing the best epoch
        # deserves the whole validation set.
        stopper = self.stopper
        assert stopper is not None
        # Every process evaluates the whole validation set with the same weights, so ``right``
        # (which texts were right) agrees across processes as the broadcast values do.
        full_loss, full_acc, right = loss_accuracy_and_right(self.model, self.val_feed, self.val_ds.labels,
                                                             self.full_val_batches, self.device, self.precision,
                                                             self.task)
        entry.update(full_val_loss=full_loss, full_val_accuracy=full_acc)
        value = broadcast_float(full_loss if stopper.metric == "val_loss" else full_acc, self.dist)
        tie = broadcast_float(full_loss, self.dist) if stopper.metric == "val_accuracy" else None
        stopped = stopper.update(epoch + 1, value, self.bare, tie, right)
        self.log(f"full validation set: loss {full_loss:.4f}, {self.score_name} {full_acc * 100:.2f}% | kept "
                 f"epoch {stopper.best_epoch} ({stopper.metric} {stopper.best_value:.4f})"
                 + (f" | stopping early: no gain for {stopper.patience} epoch(s)" if stopped else ""))
        return stopped
