"""``gptclf train``: the chapter's run, phase by phase.

:func:`run_training` reads top to bottom as the chapter does:

1. :func:`prepare_data`: read the data, balance it, split it 70/10/20 (``gptclf.data.splits``);
2. :func:`encode_splits`: load the backbone and its tokenizer, turn every split into token ids;
3. :func:`build_classifier`: swap the vocabulary head for ``num_classes`` outputs, freeze;
4. :func:`~gptclf.training.trunk_cache.build_feeds`: the frozen-trunk cache (or not);
5. :class:`~gptclf.training.loop.Trainer`: the book's training loop;
6. :func:`evaluate_splits`: accuracy, loss and per-class metrics of every split;
7. :func:`save`: the self-describing run directory (``gptclf.rundir``).

What makes it fast (``--reference`` turns all of it off to run the book's exact path): the
frozen-trunk cache; dynamic padding with length-grouped batches (right padding under a
causal mask never changes a real token's hidden state, so pooling the last *real* token
gives every text the same result in any batch); on GPUs bf16 autocast, fused AdamW, TF32
and optionally ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from .. import tasks
from ..config import RunConfig, TrainConfig
from ..data.encoding import EncodedDataset, encode_tokens, pad_to_length, tokenize_texts
from ..data.long_text import LongText, choose_mode, describe_lengths, length_summary, room_for
from ..data.splits import DataSplits, load_splits
from ..data.tables import Example
from ..device import configure_backends, pick_device, resolve_precision
from ..errors import DataWarning, GptclfError
from ..loading import check_model_name, load_backbone
from ..loading.backbone import Backbone
from ..progress import Log
from ..models.classifier import SequenceClassifier, freeze_for_finetuning, replace_head
from ..files import read_json_object
from ..graphs import Shapes
from ..rundir.base import BaseWeights, fingerprint_matches
from ..rundir.save import TEST_SPLIT, claim_run_dir, directory_bytes, examples_jsonl, save_run
from ..rundir.weights import describe_run_size, weights_to_save
from .controls import EarlyStopping, stopper_for
from .distributed import DistContext, barrier, broadcast_text, init_distributed, shutdown
from .evaluate import predict_logits
from .loop import History, Trainer
from .memory import available_memory, estimate_for_model, memory_warning
from .state import Checkpointer, data_fingerprint, discard_partial, find_partial, load_checkpoint, partial_dir, \
    read_run_info, write_run_info
from .static_step import training_shapes
from .tracking import Tracker, open_tracker
from .trunk_cache import Feeds, build_feeds

SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))  # (key, name in messages)


# ------------------------------------------------------------------------- the phases


def prepare_data(cfg: TrainConfig, examples: list[Example] | None = None, out: Path | None = None) -> DataSplits:
    """The chapter's data steps: read (or take ``examples``, in memory), balance (``--balance``),
    split 70/10/20 (``--split``; or the given files). ``cfg`` is resolved; ``out``: the run
    directory, whose ``<out>.audit/`` ``--audit`` reads (made by :func:`gptclf.auditing.run.audit_first`)."""
    task = tasks.get(cfg.task)
    read_labels = task.label_reader(cfg.label_delimiter)
    header = False if cfg.no_header else None
    audit_dropped = None
    if cfg.drop_label_issues or cfg.audit:  # every row as read, less those the audit flags, before balancing and splitting
        from ..auditing.drop import audit_dir, drop_label_issues
        from ..auditing.report import AUDIT_CSV
        from ..data.splits import read_examples

        if cfg.audit and out is None:
            raise GptclfError("--audit needs the run directory its audit is kept beside")
        rows, source = (examples, cfg.data) if examples is not None else \
            read_examples(cfg.data, cfg.text_column, cfg.label_column, read_labels, header)
        audit_csv = str(audit_dir(out) / AUDIT_CSV) if cfg.audit else str(cfg.drop_label_issues)
        examples, audit_dropped = drop_label_issues(audit_csv, rows, source, by_train=cfg.audit)
    splits = load_splits(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                         label_column=cfg.label_column, header=header, balance=cfg.balance, seed=cfg.seed, split=cfg.split,
                         examples=examples, task=task, read_labels=read_labels)
    splits.audit_dropped = audit_dropped
    return splits


@dataclass
class Encoded:
    """The backbone and every split as token ids, cut to one max length (``--max-length``; by
    default min(context, MAX_LENGTH_CAP), or with ``--padding longest`` the longest training text)."""

    backbone: Backbone
    datasets: dict[str, EncodedDataset]  # "train", "val", "test"
    max_length: int
    long_text: LongText = LongText()  # --long-text as given or chosen from the training texts
    long_text_line: str = ""  # why, and how much of the text is read
    room: int = 0  # text tokens one model input holds (max length less the template)

    def length_summaries(self) -> dict[str, Any]:
        """Each split's text lengths and windows (metrics.json ``text_lengths``)."""
        return {key: {**length_summary(ds.text_lengths, self.room, ds.windows), "fed_tokens": int(ds.lengths.sum())}
                for key, ds in self.datasets.items() if ds.text_lengths is not None}


def encode_splits(cfg: TrainConfig, splits: DataSplits, backbone: Backbone | None = None) -> Encoded:
    """Load the backbone (unless given) and turn every split into token ids and the task's targets,
    cut to :meth:`TrainConfig.max_length_for` the backbone (val and test to the training split's),
    long texts fitted as ``--long-text`` says or, left out, as the training texts' lengths call for
    (:func:`gptclf.data.long_text.choose_mode`)."""
    backbone = backbone or load_backbone(cfg.model, cfg.init)
    tok, ctx_len = backbone.tokenizer, backbone.model.config.context_length
    task = tasks.get(cfg.task)
    index = {lab: i for i, lab in enumerate(splits.labels)}
    datasets: dict[str, EncodedDataset] = {}
    max_length = cfg.max_length_for(ctx_len)
    long_text, line, room = LongText(), "", 0
    for key, name in SPLITS:
        examples = getattr(splits, key)
        ids, pre, post = tokenize_texts(tok, [e.text for e in examples], cfg.template)
        if key == "train":
            max_length = pad_to_length(ids, len(pre) + len(post), max_length, ctx_len, name)
            room = room_for(pre, post, max_length, name)
            mode, line = choose_mode(ids, room, cfg.long_text)
            long_text = cfg.long_text_config(mode)
        datasets[key] = encode_tokens(ids, pre, post, task.targets(examples, index), max_length, ctx_len, name,
                                      long_text)
    return Encoded(backbone, datasets, max_length, long_text, line, room)


def build_classifier(backbone: Backbone, cfg: TrainConfig, num_classes: int) -> tuple[SequenceClassifier, int]:
    """The chapter's head swap (seeded by ``--seed``, as the book's ``torch.manual_seed(123)``
    before it) and freezing, as ``cfg`` (resolved) says; the head's bias, left out, is the
    backbone family's (:meth:`TrainConfig.for_backbone`).

    ``--trainable lora`` freezes everything and adds LoRA adapters instead of unfreezing whole
    blocks. Returns the classifier and the number of leading blocks that are frozen.
    """
    model = backbone.model
    cfg = cfg.for_backbone(model.config.arch)
    torch.manual_seed(cfg.seed)
    replace_head(model, num_classes, bias=bool(cfg.head_bias),
                 aggregation=cfg.aggregation if cfg.long_text == "chunk" else None)
    if cfg.trainable == "lora":
        from ..peft.lora import freeze_for_lora

        frozen = freeze_for_lora(model, cfg.lora_config())
    else:
        frozen = freeze_for_finetuning(model, cfg.trainable)
    return SequenceClassifier(model, cfg.pooling, causal=cfg.causal_mask,
                              grad_checkpointing=cfg.grad_checkpointing), frozen


def setup_classifier(cfg: TrainConfig, backbone: Backbone, num_classes: int, device: torch.device, *,
                     fresh_copy: bool = False) -> tuple[SequenceClassifier, int]:
    """What every run (``gptclf train``, each ``gptclf tune`` candidate, the scripts' sweeps) trains:
    :func:`build_classifier` on ``device``; ``fresh_copy`` builds it on a copy of the backbone's
    model, which stays as loaded (full fine-tuning and LoRA change the blocks themselves)."""
    if fresh_copy:
        backbone = Backbone(copy.deepcopy(backbone.model), backbone.tokenizer, backbone.source)
    model, frozen = build_classifier(backbone, cfg, num_classes)
    return model.to(device), frozen


def make_trainer(cfg: TrainConfig, model: SequenceClassifier, feeds: Feeds, enc: Encoded, device: torch.device,
                 precision: str, log: Log, **kwargs: Any) -> tuple[Trainer, EarlyStopping | None]:
    """The book's loop for ``model`` on ``feeds``: AdamW (:func:`make_optimizer`), the run's
    best-epoch tracker or early stopping (:func:`~gptclf.training.controls.stopper_for`), and
    ``kwargs`` for :class:`Trainer` (processes, checkpoints, class weights, static shapes)."""
    stopper = stopper_for(cfg)
    trainer = Trainer(model, make_optimizer(model, cfg, device), feeds["train"], feeds["val"], enc.datasets["train"],
                      enc.datasets["val"], cfg, device, precision, log, stopper=stopper, **kwargs)
    return trainer, stopper


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


def evaluate_splits(model: SequenceClassifier, feeds: Feeds, enc: Encoded, splits: DataSplits,
                    cfg: TrainConfig, device: torch.device, precision: str) -> dict[str, Any]:
    """Every split's accuracy, loss and report, and the test split's most confident mistakes,
    scored as the saved model will score them: first what the task calibrates on the validation
    split (with ``--calibrate``, the default: a temperature, or per-label thresholds; see
    :mod:`gptclf.tasks`), then every split with it."""
    task = tasks.get(cfg.task)
    t0 = time.perf_counter()
    logits = {key: predict_logits(model, feeds[key], len(enc.datasets[key]), cfg.eval_batch_size,
                                  enc.datasets[key].lengths, device, precision) for key, _ in SPLITS}
    targets = {key: enc.datasets[key].labels.numpy() for key, _ in SPLITS}
    metrics = task.calibrate(logits, targets, splits.labels, cfg.calibrate)
    for key, _ in SPLITS:
        texts = [e.text for e in splits.test] if key == "test" else None
        metrics.update(task.split_metrics(logits[key], targets[key], splits.labels, key, metrics, texts))
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics


def save(out: Path, model: SequenceClassifier, cfg: TrainConfig, splits: DataSplits, enc: Encoded,
         metrics: dict[str, Any], history: History, base: BaseWeights, *, resumed: bool, log: Log) -> None:
    """Write the run directory: the weights (only those training changed, with a reference to
    the base, unless it cannot be rebuilt or ``--self-contained``; see :mod:`gptclf.rundir.weights`),
    config.json (:class:`RunConfig`), metrics, plots."""
    saved = weights_to_save(model, cfg, enc.backbone, base, log)
    metrics["weights"] = saved.figures
    tok = enc.backbone.tokenizer
    run_config = RunConfig.for_model(
        model, tok, labels=splits.labels, max_length=enc.max_length, pooling=cfg.pooling, padding=cfg.padding, pad_id=tok.pad_id,
        template=cfg.template, causal_mask=cfg.causal_mask, head_bias=cfg.head_bias, trainable=cfg.trainable,
        base_model=enc.backbone.source, lora=saved.lora, data=splits.summary(), train=asdict(cfg),
        gptclf_version=__version__, examples=page_examples(splits), weights=saved.weights,
        base_weights=saved.base_weights, task=cfg.task, long_text=enc.long_text.to_config(),
        **tasks.get(cfg.task).run_config_fields(metrics))
    save_run(out, model, tok, run_config, metrics, history, replace_interrupted=resumed, tensors=saved.tensors,
             files={TEST_SPLIT: examples_jsonl(splits.test)})


def page_examples(splits: DataSplits, per_label: int = 2, max_chars: int = 200) -> list[dict[str, str]]:
    """A few short training texts of each label, for the web page's example buttons (config.json
    ``examples``): the model's own kind of text rather than someone else's."""
    out: list[dict[str, str]] = []
    for label in splits.labels:
        # Ties in length broken by the text: a set's order changes with the process's hash seed.
        texts = sorted({e.text.strip() for e in splits.train if label in e.label_set() and e.text.strip()},
                       key=lambda t: (len(t), t))
        short = [t for t in texts if len(t) <= max_chars] or [t[:max_chars] for t in texts]
        picks = short[len(short) // 2:][:per_label]  # middling length: neither a one-word nor a wall of text
        out += [{"label": label, "text": t} for t in picks]
    return out


# ------------------------------------------------------------------------- the run


def run_training(cfg: TrainConfig, log: Log | None = None, *, resume_from: str | Path | None = None,
                 examples: list[Example] | None = None) -> Path:
    """``gptclf train``: data, model, fine-tuning, final evaluation, run directory.

    Under torchrun (``WORLD_SIZE`` > 1) every process runs this; rank 0 logs, writes the
    checkpoints and saves the run. ``resume_from`` is a checkpoint directory
    (``<out>.partial``): see :func:`resume_training`. ``examples``: the training data in
    memory (``gptclf.train(texts=..., labels=...)``); ``cfg.data`` then only describes it.
    """
    ctx, dist_device = init_distributed(cfg.device)
    resume = Path(resume_from) if resume_from else None
    try:
        with claimed_out(cfg, ctx, resume) as out:
            return _run(cfg, log, ctx, dist_device, out, resume, examples)
    finally:
        shutdown(ctx)


def resume_training(run: str | Path, log: Log | None = None, progress: bool = True) -> Path:
    """Continue an interrupted run with the options it was started with (saved in its checkpoint)."""
    directory = find_partial(run)
    cfg = saved_config(directory)
    cfg.progress = progress
    return run_training(cfg, log, resume_from=directory)


def saved_config(run: str | Path) -> TrainConfig:
    """The options an unfinished run was started with (``run`` or ``run.partial``)."""
    directory = find_partial(run)
    saved = read_run_info(directory)["train"]
    values = {}
    for f in fields(TrainConfig):
        if f.name in saved:
            if not _has_type(saved[f.name], str(f.type)):
                raise GptclfError(f"{directory / 'run.json'}: the saved option {f.name!r} is not a valid "
                                  f"{f.type}", hint="the checkpoint is damaged: start again with --overwrite")
            values[f.name] = saved[f.name]
    return TrainConfig(**values)


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "None": (type(None),), "list[str]": (list,)}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a TrainConfig field's annotation (``"float | None"``...)."""
    ok = any(isinstance(value, t) for part in annotation.split("|") for t in _TYPES.get(part.strip(), (object,)))
    if isinstance(value, bool) and "bool" not in annotation:
        return False  # True is an int to Python, not a learning rate
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return ok


@dataclass
class RunSetting:
    """Where and how the run computes, what it resumes from, and where it reports (--report-to)."""

    ctx: DistContext
    device: torch.device
    precision: str
    out: Path
    checkpointer: Checkpointer
    resume_from: Path | None
    log: Log
    tracker: Tracker = field(default_factory=Tracker)


def _run(cfg: TrainConfig, log: Log | None, ctx: DistContext, dist_device: torch.device | None, out: Path,
         resume_from: Path | None, examples: list[Example] | None = None) -> Path:
    options = asdict(cfg)  # as given: what a resumed run starts again with
    cfg = cfg.resolved()
    t_start = time.perf_counter()
    s = run_setting(cfg, log, ctx, dist_device, out, resume_from)
    # Opened before any data is read (a missing package fails at once); closed with the run's outcome.
    with open_tracker(cfg.report_to, cfg.tracking_uri, s.out, s.log, enabled=ctx.is_main) as s.tracker:
        return _train(cfg, s, options, examples, t_start)


def _train(cfg: TrainConfig, s: RunSetting, options: dict[str, Any], examples: list[Example] | None,
           t_start: float) -> Path:
    """The phases of :func:`run_training` once the run's setting is known."""
    ctx, resume_from = s.ctx, s.resume_from
    splits = prepare_data(cfg, examples, s.out)
    s.log(f"data: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test, labels {splits.labels} (balance {splits.balance}, {splits.split} split)\n"
          + splits.describe())
    if splits.audit_dropped:
        s.log(f"data: dropped {splits.audit_dropped['n_rows']} row(s) that {splits.audit_dropped['audit']} flags as label "
              f"issues ({splits.audit_dropped['given_labels']})")
    enc = encode_splits(cfg, splits)
    cfg = replace(cfg.for_backbone(enc.backbone.model.config.arch), long_text=enc.long_text.mode)
    s.log(enc.long_text_line)
    for key, name in SPLITS:
        s.log(describe_lengths(name, enc.length_summaries()[key]))
    s.log(f"model: {cfg.model} ({cfg.init}), max length {enc.max_length} tokens, pad id {enc.backbone.tokenizer.pad_id}, "
          f"padding {cfg.padding}, pooling {cfg.pooling}, device {s.device} ({s.precision})"
          + (f", {ctx.world_size} processes" if ctx.world_size > 1 else ""))
    s.tracker.log_options(asdict(cfg))
    base = BaseWeights.of(enc.backbone.model)  # before the head swap and any training
    resume = _checkpoint_to_resume(cfg, s, enc, options, base)
    model, frozen = _model(cfg, enc, splits, s)
    class_weight = _class_weights(cfg, enc, splits, s.log)
    pad_to = enc.max_length if cfg.padding == "longest" else None
    _log_memory_estimate(model, cfg, frozen, enc.max_length, enc.datasets.values(), pad_to, s.device, s.log)
    shapes = training_shapes(cfg, model, s.device, s.precision, enc.max_length, ctx.world_size, s.log)
    feeds = build_feeds(cfg, model, frozen, enc.datasets, enc.backbone.tokenizer.pad_id, pad_to, s.device,
                        s.precision, s.log, shapes)
    try:
        history, metrics = _fit_and_evaluate(cfg, model, feeds, enc, splits, s, class_weight, resume, shapes)
    finally:
        feeds.close()
    if ctx.is_main:
        metrics.update(_run_figures(cfg, model, feeds, enc, history, s, time.perf_counter() - t_start, metrics))
        save(s.out, model, cfg, splits, enc, metrics, history, base,
             resumed=resume_from is not None, log=s.log)
        _report_saved(s, metrics)
        s.tracker.finish(metrics, s.out)
    barrier(ctx)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return s.out


@contextlib.contextmanager
def claimed_out(cfg: TrainConfig, ctx: DistContext, resume_from: Path | None) -> Iterator[Path]:
    """The run's output directory (--out, the resumed run's, or a new ``runs/<timestamp>``),
    locked by rank 0 against other gptclf processes from now until the run is saved
    (:func:`gptclf.rundir.save.claim_run_dir`); every rank gets rank 0's name."""
    out: str | None = cfg.out or None
    if resume_from is not None:
        out = str(read_run_info(resume_from)["out"])
    if not ctx.is_main:
        yield Path(broadcast_text("", ctx))
        return
    with claim_run_dir(out) as path:
        yield Path(broadcast_text(str(path), ctx))


def run_setting(cfg: TrainConfig, log: Log | None, ctx: DistContext, dist_device: torch.device | None,
                out: Path, resume_from: Path | None) -> RunSetting:
    """Device, precision, seed, and the output directory (``out``, claimed: :func:`claimed_out`;
    checked before any data is read)."""
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    if not ctx.is_main:
        log = lambda s: None  # noqa: E731 - one voice: rank 0's
        cfg.progress = False
        warnings.simplefilter("ignore", DataWarning)
    device = dist_device or pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    torch.manual_seed(cfg.seed)
    check_model_name(cfg.model)
    if resume_from is not None:
        info = read_run_info(resume_from)
        if info.get("world_size", 1) != ctx.world_size:
            raise GptclfError(f"this run was started on {info.get('world_size', 1)} process(es), "
                              f"not {ctx.world_size}: its batches depend on it",
                              hint=f"resume with torchrun --nproc_per_node {info.get('world_size', 1)}"
                              if info.get("world_size", 1) > 1 else "resume without torchrun")
    _check_out(out, resume_from is not None, cfg.overwrite and resume_from is None, ctx.is_main)
    barrier(ctx)  # every rank checks before rank 0 creates <out>.partial
    checkpointer = Checkpointer(partial_dir(out), cfg.checkpoint_every, enabled=ctx.is_main)
    return RunSetting(ctx, device, precision, out, checkpointer, resume_from, log)


def _check_out(out: Path, resuming: bool, overwrite: bool = False, is_main: bool = True) -> None:
    partial = partial_dir(out)
    if resuming:
        metrics = out / "metrics.json"
        if metrics.exists() and not read_json_object(metrics).get("interrupted", False):
            raise GptclfError(f"{out} is already a finished run, but {partial} is still there",
                              hint=f"nothing to resume: delete {partial}")
        return
    if out.exists() and any(out.iterdir()):
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
    if partial.exists() and overwrite:
        discard_partial(partial, is_main)
    elif partial.exists():
        raise GptclfError(f"{partial} holds the checkpoints of an unfinished run to {out}",
                          hint=f"continue it with 'gptclf train --resume {out}', or start again with "
                               f"--overwrite (which deletes {partial})")


def _checkpoint_to_resume(cfg: TrainConfig, s: RunSetting, enc: Encoded, options: dict[str, Any],
                          base: BaseWeights) -> Any:
    """The checkpoint a resumed run continues from (None: from the start); a new run records
    its options and fingerprints of its data and base model, which a resume must match."""
    fingerprint = data_fingerprint(*enc.datasets.values())
    if s.resume_from is not None:
        info = read_run_info(s.resume_from)
        if info.get("data_fingerprint") != fingerprint:
            raise GptclfError(f"the data differs from the data the run in {s.resume_from} started with",
                              hint="resume with the same data files (and model), or start a new run")
        # The checkpoint holds only the trained weights; the frozen ones are loaded again, so a
        # base changed in between (a re-downloaded hub revision, an edited local directory)
        # would silently mix two models.
        if not fingerprint_matches(enc.backbone.model, info.get("base_fingerprint"), base.fingerprint):
            what = "its base model's weights have changed since the run started" if info.get("base_fingerprint") \
                else "its run.json records no fingerprint of the base model's weights"
            raise GptclfError(f"cannot resume {s.resume_from}: {what}",
                              hint=f"resume with the same --model ({cfg.model}) as it was, or start again "
                                   "with --overwrite")
        resume = load_checkpoint(s.resume_from)
        if resume is None:
            s.log(f"{s.resume_from} has no checkpoint yet: starting the run again from the beginning")
        return resume
    if s.checkpointer.enabled:
        where = str(s.out.resolve())  # absolute: --resume may run from another directory
        write_run_info(s.checkpointer.directory, {
            "gptclf_version": __version__, "out": where, "world_size": s.ctx.world_size,
            "data_fingerprint": fingerprint, "base_fingerprint": base.fingerprint,
            "train": {**options, "out": where}})
    return None


def _model(cfg: TrainConfig, enc: Encoded, splits: DataSplits, s: RunSetting) -> tuple[SequenceClassifier, int]:
    """The classifier on its device."""
    model, frozen = setup_classifier(cfg, enc.backbone, len(splits.labels), s.device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    s.log(f"trainable parameters: {n_trainable:,} of {n_total:,} ({cfg.trainable}; "
          f"{frozen} of {model.config.n_layers} blocks frozen)")
    if cfg.trainable == "lora" and frozen == 0 and cfg.cache != "off":
        s.log("trunk cache off: LoRA adapters reach block 0, so no block's output is fixed")
    return model, frozen


def _class_weights(cfg: TrainConfig, enc: Encoded, splits: DataSplits, log: Log) -> torch.Tensor | None:
    """``--balance weight``: the task's loss weights (inverse class frequency, or each label's
    negatives/positives ratio)."""
    if cfg.balance != "weight":
        return None
    weight, line = tasks.get(cfg.task).balance_weights(enc.datasets["train"].labels, splits.labels)
    log(line)
    return weight


def _log_memory_estimate(model: SequenceClassifier, cfg: TrainConfig, frozen: int, max_length: int,
                         datasets: Any, pad_to: int | None, device: torch.device, log: Log) -> None:
    """Print what the run will need before it starts, and warn when that exceeds what there is."""
    uses_cache = cfg.cache != "off" and frozen > 0
    datasets = list(datasets)
    rows = [d.window_rows() if d.offsets is not None else d for d in datasets]  # what the model runs on
    cache_tokens = sum(len(d) * pad_to if pad_to else int(d.lengths.sum()) for d in rows) if uses_cache else 0
    longest = max((int(d.row_lengths.max()) for d in rows if len(d)), default=max_length)
    # A chunked batch holds every window of its texts: at most batch size x the most windows a text has.
    windows = max((int(d.windows.max()) for d in datasets if d.windows is not None and len(d)), default=1)
    est = estimate_for_model(model.backbone, frozen, cfg.batch_size * windows, pad_to or min(max_length, longest),
                             cfg.grad_checkpointing, cache_tokens)
    log(est.describe())
    available, where = available_memory(device)
    warning = memory_warning(est, available, where)
    if warning:
        log(warning)


def _fit_and_evaluate(cfg: TrainConfig, model: SequenceClassifier, feeds: Feeds, enc: Encoded, splits: DataSplits,
                      s: RunSetting, class_weight: torch.Tensor | None, resume: Any,
                      shapes: Shapes | None = None) -> tuple[History, dict[str, Any]]:
    """Train (the book's loop), keep the best epoch if asked, evaluate every split (rank 0)."""
    if cfg.compile:
        model = torch.compile(model, dynamic=True)  # type: ignore[assignment]
    trainer, stopper = make_trainer(cfg, model, feeds, enc, s.device, s.precision, s.log, dist=s.ctx,
                                    checkpointer=s.checkpointer, class_weight=class_weight, shapes=shapes,
                                    on_record=s.tracker.record)
    if resume is not None:
        trainer.restore(*resume)
    t0 = time.perf_counter()
    history, interrupted = trainer.fit()
    metrics: dict[str, Any] = {"interrupted": interrupted, "train_seconds": time.perf_counter() - t0}
    metrics.update(_keep_best(stopper, getattr(model, "_orig_mod", model), interrupted, s.log))
    if _val_curve(history):
        metrics["val_curve"] = _val_curve(history)
    if resume is not None:
        metrics["resumed_at_step"] = resume[0]["global_step"] + 1
    if class_weight is not None:
        metrics["class_weights"] = dict(zip(splits.labels, class_weight.tolist()))
    if not interrupted and s.ctx.is_main:
        s.log("evaluate: every split in full (" + ", ".join(
            f"{name} {len(enc.datasets[key])}" for key, name in SPLITS) + " texts)")
        metrics.update(evaluate_splits(model, feeds, enc, splits, cfg, s.device, s.precision))
        for line in tasks.get(cfg.task).summary_lines(metrics, SPLITS):
            s.log(line)
    return history, metrics


def _keep_best(stopper: EarlyStopping | None, model: nn.Module, interrupted: bool, log: Log) -> dict[str, Any]:
    if stopper is None or stopper.best_epoch is None:
        return {}
    if not interrupted:
        stopper.restore_best(model)
        top = "" if stopper.top_epoch in (None, stopper.best_epoch) else \
            f"; epoch {stopper.top_epoch}'s {stopper.top_value:.4f} is within noise of it"
        log(f"keeping the weights of epoch {stopper.best_epoch} ({stopper.metric} {stopper.best_value:.4f}{top})")
    # Which validation texts the top epoch got right is resume state, not a metric.
    state = {k: v for k, v in stopper.state().items() if k != "top_right"}
    return {"best_epoch": stopper.best_epoch, "early_stopping": state}


def _val_curve(history: History) -> list[dict[str, float]]:
    """The whole validation set's loss and accuracy at each epoch end (when they were measured)."""
    return [{"epoch": e["epoch"], "val_loss": e["full_val_loss"], "val_accuracy": e["full_val_accuracy"]}
            for e in history.epochs if "full_val_loss" in e]


def _run_figures(cfg: TrainConfig, model: SequenceClassifier, feeds: Feeds, enc: Encoded, history: History,
                 s: RunSetting, seconds: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """Sizes, times and speeds, for metrics.json."""
    epochs = history.epochs
    figures: dict[str, Any] = {
        "n_train": len(enc.datasets["train"]), "n_val": len(enc.datasets["val"]), "n_test": len(enc.datasets["test"]),
        "train_seconds": metrics["train_seconds"], "cache_seconds": feeds.seconds, "seconds": seconds,
        "train_examples_per_second": sum(e["examples_per_second"] * e["seconds"] for e in epochs)
        / max(sum(e["seconds"] for e in epochs), 1e-9) if epochs else 0.0,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(s.device), "precision": s.precision, "trunk_cache": feeds.mode,
        "long_text": enc.long_text.mode, "text_lengths": enc.length_summaries(),
    }
    if s.ctx.world_size > 1:
        figures["world_size"] = s.ctx.world_size
    return figures


def _report_saved(s: RunSetting, metrics: dict[str, Any]) -> None:
    size = describe_run_size(directory_bytes(s.out), metrics["weights"], s.out)
    if metrics["interrupted"]:
        s.log(f"saved (interrupted) run to {s.out} in {metrics['seconds']:.1f}s: {size}"
              + (f"; continue it with: gptclf train --resume {s.out}"
                 if (s.checkpointer.directory / "checkpoint.json").exists() else ""))
    else:
        s.checkpointer.remove()  # the finished run replaces its checkpoints
        s.log(f"saved run to {s.out} in {metrics['seconds']:.1f}s: {size}")
