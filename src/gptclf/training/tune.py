"""``gptclf tune``: a recipe search that computes the frozen trunk once for every candidate.

The chapter's recipe (which blocks train, the learning rate, which position classifies)
is one point in a space whose best point depends on the data. A candidate here is
``(trainable, lr, pooling)``; every candidate trains with best-epoch selection, on the
same split, seed and batch order as ``gptclf train`` would, so a candidate's result *is*
the standalone run's (the tests check it).

What makes it cheap: the frozen blocks' output is computed once, for the deepest cut any
candidate needs (:meth:`TrunkCache.build`), then extended block by block to every other
cut (:meth:`TrunkCache.extend`); each candidate runs only its trainable tail. Pooling
never touches the cache, so all poolings share it.

Bad candidates stop early (the median stopping rule, a sequential form of successive
halving): through ``--prune-epochs`` epochs, a candidate whose full-validation result at an
epoch is below the median of the earlier candidates' at that epoch stops there. The
default recipe (the train options) goes first and is never stopped, so the winner is never
worse on validation than the default. Selection reads the validation split only; the test
split is evaluated once, for the winner.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import POOLINGS, TrainConfig, TuneOptions
from ..data.long_text import AUTO_CHUNK_SHARE, LONG_TEXT_MODES
from ..errors import DataWarning, GptclfError
from ..models.classifier import SequenceClassifier, parse_trainable
from ..files import read_json_object
from ..rundir.base import BaseWeights
from ..rundir.weights import describe_run_size
from ..progress import Log
from ..rundir.save import directory_bytes
from .distributed import init_distributed, shutdown
from .loop import History
from .recipe import Encoded, claimed_out, encode_splits, evaluate_splits, make_trainer, prepare_data, run_setting, save, \
    setup_classifier
from .trunk_cache import CachedFeeder, Feeder, Feeds, TokenFeeder, TrunkCache, cache_mode, model_rows, per_text

DEFAULT_TRAINABLES = ("last_layer", "1", "2", "4")
DEFAULT_LONG_TEXTS = ("truncate", "chunk")  # searched when more than AUTO_CHUNK_SHARE of the texts are long
LR_FACTORS = (1.0, 2.5)


@dataclass(frozen=True)
class Candidate:
    trainable: str
    lr: float
    pooling: str
    long_text: str | None = None  # --long-text; None: no long-text search, the run's own mode

    def describe(self) -> str:
        return f"trainable {self.trainable}, lr {self.lr:g}, pooling {self.pooling}" + \
            (f", long-text {self.long_text}" if self.long_text else "")

    def to_dict(self) -> dict[str, Any]:
        """metrics.json's form: ``long_text`` only where the search tried several."""
        d = asdict(self)
        if self.long_text is None:
            del d["long_text"]
        return d


@dataclass
class Trial:
    """One candidate's outcome: its per-epoch validation curve and, while it leads, its weights."""

    candidate: Candidate
    curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    pruned_at: int | None = None
    seconds: float = 0.0
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    history: History | None = field(default=None, repr=False)

    def key(self, epoch: int | None = None) -> tuple[float, float]:
        """Higher is better: validation accuracy, then the lower validation loss."""
        e = self.curve[(epoch or self.best_epoch or 1) - 1]
        return e["val_accuracy"], -e["val_loss"]

    def row(self) -> dict[str, Any]:
        best = self.curve[self.best_epoch - 1] if self.best_epoch else {}
        return {**self.candidate.to_dict(), "epochs_run": len(self.curve), "best_epoch": self.best_epoch,
                "val_accuracy": best.get("val_accuracy"), "val_loss": best.get("val_loss"),
                "pruned_at_epoch": self.pruned_at, "seconds": self.seconds}


# ------------------------------------------------------------------------- the space


def _split_list(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise GptclfError(f"{option} is empty", hint=f"give a comma-separated list, e.g. {option} a,b")
    return items


def long_text_modes(mode: str, lengths: Any, room: int, given: str | None) -> tuple[list[str], dict[str, Any]]:
    """The --long-text values to search (``mode``, the run's own, first) and metrics.json's
    ``long_text_search``: ``--long-texts`` if given; else truncate and chunk when more than
    AUTO_CHUNK_SHARE of the training texts (``lengths``, in tokens) are longer than one window
    (``room`` text tokens); else only ``mode``, which leaves the search as it is for short texts."""
    n = len(lengths) if lengths is not None else 0
    longer = int((np.asarray(lengths) > room).sum()) if n else 0
    record: dict[str, Any] = {"texts": n, "longer_than_window": longer, "window": room,
                              "share": longer / n if n else 0.0, "threshold": AUTO_CHUNK_SHARE}
    wanted = _split_list(given, "--long-texts")
    for m in wanted or []:
        if m not in LONG_TEXT_MODES:
            raise GptclfError(f"--long-texts: {m!r} is not a --long-text mode", hint=f"use {', '.join(LONG_TEXT_MODES)}")
    if wanted is None and record["share"] <= AUTO_CHUNK_SHARE:
        wanted = []
    modes = list(dict.fromkeys([mode, *(DEFAULT_LONG_TEXTS if wanted is None else wanted)]))
    return modes, {**record, "searched": len(modes) > 1, "modes": modes}


def search_space(cfg: TrainConfig, opts: TuneOptions, n_layers: int,
                 long_texts: list[str] | None = None) -> list[Candidate]:
    """The candidates, the default recipe (``cfg``'s resolved trainable, lr, pooling) first; with
    several ``long_texts`` (:func:`long_text_modes`) each in every mode: the default recipe in
    each first (so a short budget still compares the modes), then the rest of the grid."""
    cands = _recipe_space(cfg, opts, n_layers)
    if long_texts is not None and len(long_texts) > 1:
        cands = [replace(cands[0], long_text=m) for m in long_texts] + \
            [replace(c, long_text=m) for m in long_texts for c in cands[1:]]
    return cands[: opts.trials] if opts.trials else cands


def _recipe_space(cfg: TrainConfig, opts: TuneOptions, n_layers: int) -> list[Candidate]:
    """Every (trainable, lr, pooling) candidate, the default recipe first."""
    default = Candidate(str(cfg.trainable), float(cfg.lr), str(cfg.pooling))
    trainables = _split_list(opts.trainables, "--trainables") or \
        [t for t in DEFAULT_TRAINABLES if t == "last_layer" or int(t) <= n_layers]
    try:
        lrs = [float(x) for x in _split_list(opts.lrs, "--lrs") or [cfg.lr * f for f in LR_FACTORS]]
    except ValueError:
        raise GptclfError(f"--lrs {opts.lrs!r} is not a list of numbers") from None
    if any(not lr > 0 for lr in lrs):
        raise GptclfError("--lrs: every learning rate must be positive")
    poolings = _split_list(opts.poolings, "--poolings") or [default.pooling]
    for p in poolings:
        if p not in POOLINGS or (p == "last" and cfg.padding == "dynamic"):
            raise GptclfError(f"--poolings: {p!r} is not usable here",
                              hint=f"use {', '.join(x for x in POOLINGS if x != 'last')} (last needs --padding longest)")
    depth = {t: _depth(t, n_layers) for t in [*trainables, default.trainable]}
    seen, out = {(depth[default.trainable], default.lr, default.pooling)}, [default]
    grid = [Candidate(t, lr, p) for t in trainables for lr in lrs for p in poolings]
    if opts.poolings is None and default.pooling != "mean":
        grid.append(Candidate(default.trainable, default.lr, "mean"))
    for c in grid:
        k = (depth[c.trainable], c.lr, c.pooling)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _depth(trainable: str, n_layers: int) -> int | str:
    """Trainable blocks (so 'last_block' and '1' are one candidate); 'lora' stays itself."""
    return "lora" if trainable == "lora" else parse_trainable(trainable, n_layers)


def _frozen(trainable: str, n_layers: int) -> int:
    return 0 if trainable == "lora" else n_layers - parse_trainable(trainable, n_layers)


# ------------------------------------------------------------------------- the caches


class SharedTrunk:
    """Every split's trunk output at every cut the candidates need, each block computed once."""

    def __init__(self, cfg: TrainConfig, pristine: torch.nn.Module, cuts: set[int], enc: Encoded,
                 pad_to: int | None, device: torch.device, precision: str, log: Log, held: int = 0) -> None:
        self.caches: dict[int, dict[str, TrunkCache]] = {}
        self.cfg, self.texts, self.pad_to, self.device = cfg, enc.datasets, pad_to, device
        self.datasets = {k: model_rows(ds) for k, ds in enc.datasets.items()}  # a chunked split's windows
        self.pad_id = enc.backbone.tokenizer.pad_id
        self.seconds = 0.0
        trunk = SequenceClassifier(pristine, cfg.pooling, causal=cfg.causal_mask)
        cached = sorted(c for c in cuts if c > 0)
        # Budgeted for every cut's cache (all are held until the search ends) on top of what
        # the other --long-text modes' caches already hold (``held`` bytes).
        self.mode = cache_mode(cfg, trunk, min(cached, default=0), list(self.datasets.values()), pad_to, device,
                               log, copies=len(cached), held=held) if cached else "off"
        per_copy = sum(TrunkCache.nbytes(d, pristine.config.emb_dim, pad_to) for d in self.datasets.values())
        self.ram_bytes = per_copy * len(cached) if self.mode in ("ram", "cpu") else 0
        if self.mode == "off":
            return
        t0 = time.perf_counter()
        try:
            self._build(trunk, cached, device, precision)
        except BaseException:  # Ctrl-C or an error while building: no spill left behind
            self.close()
            raise
        self.seconds = time.perf_counter() - t0
        log(f"cached the frozen trunk once at cuts {cached} for all candidates in {self.seconds:.1f}s")

    def _build(self, trunk: SequenceClassifier, cached: list[int], device: torch.device, precision: str) -> None:
        """The cache at the shallowest cut, then each deeper one extended from the one before."""
        previous = None
        for cut in cached:
            split: dict[str, TrunkCache] = {}
            self.caches[cut] = split  # filled as it goes, so close() finds whatever was built
            for k, ds in self.datasets.items():
                split[k] = (TrunkCache.build(trunk, ds, cut, self.pad_id, self.pad_to, device, precision,
                                             self.cfg.eval_batch_size, k, self.mode, self.cfg.progress)
                            if previous is None else
                            self.caches[previous][k].extend(trunk, previous, cut, device, precision,
                                                            self.cfg.eval_batch_size))
            previous = cut

    def feeds(self, frozen: int) -> Feeds:
        if frozen in self.caches:
            feeds: dict[str, Feeder] = {k: per_text(CachedFeeder(c, frozen, self.device), self.texts[k], self.cfg)
                                        for k, c in self.caches[frozen].items()}
            return Feeds(feeds, [], self.mode, 0.0)
        return Feeds({k: per_text(TokenFeeder(ds, self.pad_id, self.pad_to, self.device), self.texts[k], self.cfg)
                      for k, ds in self.datasets.items()}, [], "off", 0.0)

    def close(self) -> None:
        for split in self.caches.values():
            for c in split.values():
                c.close()


# ------------------------------------------------------------------------- the search


def _classifier(cfg: TrainConfig, enc: Encoded, pristine: torch.nn.Module, n_classes: int,
                device: torch.device) -> tuple[SequenceClassifier, int]:
    """A fresh classifier for ``cfg``'s recipe, as ``gptclf train`` builds it: the pristine backbone
    copied, head swapped (seeded), frozen."""
    return setup_classifier(cfg, replace(enc.backbone, model=pristine), n_classes, device, fresh_copy=True)


def _median(keys: list[tuple[float, float]]) -> tuple[float, float]:
    return sorted(keys)[(len(keys) - 1) // 2]


def mode_of(cand: Candidate, cfg: TrainConfig) -> str:
    """The candidate's --long-text: its own where the search tries several, else the run's."""
    return cand.long_text or str(cfg.long_text)


def candidate_config(cfg: TrainConfig, cand: Candidate) -> TrainConfig:
    return replace(cfg, trainable=cand.trainable, lr=cand.lr, pooling=cand.pooling, long_text=mode_of(cand, cfg))


def run_trial(cfg: TrainConfig, cand: Candidate, enc: Encoded, pristine: torch.nn.Module, n_classes: int,
              trunk: SharedTrunk, earlier: list[Trial], prune_epochs: int, s: Any, protect: bool) -> Trial:
    """Train one candidate epoch by epoch (exactly as ``gptclf train`` with its settings; ``enc`` and
    ``trunk``: its --long-text mode's)."""
    t0 = time.perf_counter()
    ccfg = candidate_config(cfg, cand)
    torch.manual_seed(ccfg.seed)
    model, frozen = _classifier(ccfg, enc, pristine, n_classes, s.device)
    feeds = trunk.feeds(frozen)
    # As gptclf train: keep-best (run_tune forces it) or early stopping.
    trainer, stopper = make_trainer(ccfg, model, feeds, enc, s.device, s.precision, lambda m: None)
    assert stopper is not None
    trial = Trial(cand)
    for epoch in range(1, ccfg.epochs + 1):
        _, interrupted = trainer.fit(until=epoch)
        if interrupted:
            raise KeyboardInterrupt
        e = trainer.history.epochs[-1]
        trial.curve.append({"epoch": epoch, "val_loss": e["full_val_loss"], "val_accuracy": e["full_val_accuracy"]})
        if trainer.finished:
            break
        at_epoch = [t.key(epoch) for t in earlier if len(t.curve) >= epoch]
        if not protect and epoch <= prune_epochs and at_epoch and trial.key(epoch) < _median(at_epoch):
            trial.pruned_at = epoch
            break
    trial.best_epoch = stopper.best_epoch
    trial.state = {k: v.cpu() for k, v in stopper.best_state.items()}
    trial.history = trainer.history
    trial.seconds = time.perf_counter() - t0
    return trial


def search(cfg: TrainConfig, opts: TuneOptions, encs: dict[str, Encoded], n_classes: int, s: Any,
           pristine: torch.nn.Module, pad_to: int | None
           ) -> tuple[list[Trial], Trial, dict[str, SharedTrunk], bool]:
    """Run the candidates (the default first, protected); ``encs``: the splits encoded in each
    --long-text mode searched (the run's first). Returns every finished trial, the winner, each
    mode's caches and whether Ctrl-C stopped the search (the winner is then the best finished so far)."""
    n_layers = pristine.config.n_layers
    cands = search_space(cfg, opts, n_layers, list(encs))
    trunks: dict[str, SharedTrunk] = {}
    try:
        held = 0  # bytes the modes' caches built so far hold in RAM: each budget counts them
        for mode, enc in encs.items():  # a mode's trunk holds its own rows: whole texts or windows
            cuts = {_frozen(c.trainable, n_layers) for c in cands if mode_of(c, cfg) == mode}
            if cuts:
                trunks[mode] = SharedTrunk(replace(cfg, long_text=mode), pristine, cuts, enc, pad_to, s.device,
                                           s.precision, s.log, held=held)
                held += trunks[mode].ram_bytes
        s.log(f"searching {len(cands)} candidates, {cfg.epochs} epochs each at most (best epoch kept)")
        trials, best, interrupted = _run_candidates(cfg, opts, cands, encs, n_classes, s, pristine, trunks)
    except BaseException:  # Ctrl-C before any candidate finished, or an error: no cache spill left behind
        for trunk in trunks.values():
            trunk.close()
        raise
    return trials, best, trunks, interrupted


def _run_candidates(cfg: TrainConfig, opts: TuneOptions, cands: list[Candidate], encs: dict[str, Encoded],
                    n_classes: int, s: Any, pristine: torch.nn.Module,
                    trunks: dict[str, SharedTrunk]) -> tuple[list[Trial], Trial, bool]:
    trials: list[Trial] = []
    best: Trial | None = None
    t0 = time.perf_counter()
    for i, cand in enumerate(cands):
        if opts.budget_s is not None and trials and time.perf_counter() - t0 > opts.budget_s:
            s.log(f"budget of {opts.budget_s:g}s spent: {len(cands) - i} candidate(s) not tried")
            break
        mode = mode_of(cand, cfg)
        try:
            trial = run_trial(cfg, cand, encs[mode], pristine, n_classes, trunks[mode], trials, opts.prune_epochs,
                              s, protect=i == 0)
        except KeyboardInterrupt:
            if best is None:  # nothing finished: nothing to save (exit 130, as before)
                raise
            # As train saves the model so far: the finished candidates are not thrown away.
            s.log(f"interrupted in candidate {i + 1}/{len(cands)} ({cand.describe()}): saving the best of the "
                  f"{len(trials)} finished candidate(s), {best.candidate.describe()}")
            return trials, best, True
        trials.append(trial)
        if best is None or trial.key() > best.key():
            if best is not None:
                best.state = {}  # only the leader's weights are kept
            best = trial
        else:
            trial.state = {}
        r = trial.row()
        s.log(f"[{i + 1}/{len(cands)}] {cand.describe()}: val accuracy {r['val_accuracy'] * 100:.2f}%, "
              f"loss {r['val_loss']:.4f} (epoch {r['best_epoch']}"
              + (f", stopped after epoch {trial.pruned_at}: below the median" if trial.pruned_at else "")
              + f") {trial.seconds:.1f}s" + ("  <- best so far" if best is trial else ""))
    assert best is not None
    return trials, best, False


def search_table(trials: list[Trial], best: Trial) -> str:
    """The terminal's table of every candidate."""
    modes = any(t.candidate.long_text for t in trials)  # a column only where the search tried several
    lines = [f"{'':2}{'trainable':>11} {'lr':>9} {'pooling':>12} " + (f"{'long-text':>10} " if modes else "")
             + f"{'val acc':>8} {'val loss':>9} {'epoch':>5} {'stopped':>7} {'seconds':>8}"]
    for t in trials:
        r = t.row()
        lines.append(f"{'*' if t is best else ' ':2}{r['trainable']:>11} {r['lr']:>9.2g} {r['pooling']:>12} "
                     + (f"{r['long_text']:>10} " if modes else "")
                     + f"{r['val_accuracy'] * 100:>7.2f}% {r['val_loss']:>9.4f} {r['best_epoch']:>5} "
                     f"{r['pruned_at_epoch'] or '':>7} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def run_tune(cfg: TrainConfig, opts: TuneOptions, log: Log | None = None) -> Path:
    """``gptclf tune``: search, then write the winner as a normal run directory (plus the search table)."""
    opts.check()
    if cfg.report_to != "none":  # refused rather than ignored: a user would look for a run that never comes
        raise GptclfError(f"gptclf tune does not report to {cfg.report_to} (--report-to)",
                          hint="tune, then train the winner's options with gptclf train --report-to")
    if cfg.audit:
        raise GptclfError("--audit is an option of gptclf train",
                          hint="run gptclf audit first, then tune with --drop-label-issues DIR/audit.csv")
    ctx, dist_device = init_distributed(cfg.device)
    try:
        if ctx.world_size > 1:
            raise GptclfError("gptclf tune runs in one process", hint="run it without torchrun")
        cfg = replace(cfg.resolved(), keep_best=True)
        with claimed_out(cfg, ctx, None) as out:
            return _tune(cfg, opts, log, ctx, dist_device, out)
    finally:
        shutdown(ctx)


def _tune(cfg: TrainConfig, opts: TuneOptions, log: Log | None, ctx: Any, dist_device: Any, out: Path) -> Path:
    """:func:`run_tune` in its claimed output directory ``out``."""
    t_start = time.perf_counter()
    s = run_setting(cfg, log, ctx, dist_device, out, None)
    splits = prepare_data(cfg)
    s.log(f"data: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test")
    enc = encode_splits(cfg, splits)
    cfg = replace(cfg.for_backbone(enc.backbone.model.config.arch), long_text=enc.long_text.mode)
    s.log(enc.long_text_line)
    encs, record = _long_text_encodings(cfg, opts, enc, splits, s.log)
    pristine = enc.backbone.model  # never trained: every candidate copies it
    pad_to = enc.max_length if cfg.padding == "longest" else None
    trials, best, trunks, interrupted = search(cfg, opts, encs, len(splits.labels), s, pristine, pad_to)
    try:
        out = _save_winner(cfg, best, trials, encs, splits, s, pristine, trunks, t_start, record, interrupted)
    finally:
        for trunk in trunks.values():
            trunk.close()
    s.log("\n" + search_table(trials, best))
    weights = read_json_object(Path(out) / "metrics.json").get("weights") or {}
    s.log(f"best{' so far (search interrupted)' if interrupted else ''}: {best.candidate.describe()} -> saved "
          f"run to {out}: {describe_run_size(directory_bytes(Path(out)), weights, Path(out))}")
    if interrupted:
        raise KeyboardInterrupt  # exit 130, as an interrupted gptclf train: the run is saved
    return out


def _long_text_encodings(cfg: TrainConfig, opts: TuneOptions, enc: Encoded, splits: Any,
                         log: Log) -> tuple[dict[str, Encoded], dict[str, Any]]:
    """The splits encoded in every --long-text mode the search tries (``enc``: the run's own mode's)
    and metrics.json's ``long_text_search``."""
    mode = enc.long_text.mode
    modes, record = long_text_modes(mode, enc.datasets["train"].text_lengths, enc.room, opts.long_texts)
    encs = {mode: enc}
    for other in modes[1:]:  # the same backbone: only the fitting of the texts differs
        with warnings.catch_warnings():  # "N texts were truncated": a candidate's mode, not the user's choice
            warnings.simplefilter("ignore", DataWarning)
            encs[other] = encode_splits(replace(cfg, long_text=other), splits, enc.backbone)
    if record["searched"]:
        log(f"long texts: {record['longer_than_window']} of {record['texts']} training texts are longer than one "
            f"window of {record['window']} tokens: searching --long-text {', '.join(modes)}")
    return encs, record


def _save_winner(cfg: TrainConfig, best: Trial, trials: list[Trial], encs: dict[str, Encoded], splits: Any,
                 s: Any, pristine: torch.nn.Module, trunks: dict[str, SharedTrunk], t_start: float,
                 long_text_search: dict[str, Any], interrupted: bool = False) -> Path:
    """Rebuild the winner with its best epoch's weights, evaluate (and calibrate) it, save it."""
    c = best.candidate
    wcfg = candidate_config(cfg, c)
    enc, trunk = encs[wcfg.long_text], trunks[wcfg.long_text]
    base = BaseWeights.of(pristine)
    model, frozen = _classifier(wcfg, enc, pristine, len(splits.labels), s.device)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in best.state.items():
            params[name].copy_(value)
    metrics: dict[str, Any] = evaluate_splits(model, trunk.feeds(frozen), enc, splits, wcfg, s.device, s.precision)
    metrics.update({
        "best_epoch": best.best_epoch, "val_curve": best.curve, "search": [t.row() for t in trials],
        "search_winner": c.to_dict(), "long_text_search": long_text_search,
        "search_cache_seconds": sum(t.seconds for t in trunks.values()), "interrupted": False,
        "search_interrupted": interrupted,  # the winner's training finished; the search did not
        "n_train": len(enc.datasets["train"]), "n_val": len(enc.datasets["val"]),
        "n_test": len(enc.datasets["test"]), "device": str(s.device), "precision": s.precision,
        "trunk_cache": trunk.mode, "seconds": time.perf_counter() - t_start})
    save(s.out, model, wcfg, splits, enc, metrics, best.history or History(), base, resumed=False, log=s.log)
    s.checkpointer.remove()
    return s.out
