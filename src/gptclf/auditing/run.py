"""``gptclf audit``, step by step: read every row, cut the folds, cross-fit on one trunk cache,
ask Cleanlab about the labels, compare the trunk vectors, write the table and the report."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__, tasks
from ..config import AuditOptions, TrainConfig
from ..data.tables import Example
from ..errors import GptclfError
from ..loading import check_model_name
from ..progress import Log
from ..rundir.save import default_run_dir
from ..training.state import partial_dir
from .crossfit import cross_fit
from .drop import audit_dir
from .issues import cleanlab, find_duplicates, find_outliers, label_issues
from .report import counts, summary_lines, table, write_audit
from .rows import read_rows, assign_folds


def run_audit(cfg: TrainConfig, opts: AuditOptions, log: Log | None = None,
              examples: list[Example] | None = None) -> Any:
    """Audit ``cfg.data`` (and ``cfg.val``, ``cfg.test``; or the in-memory ``examples``) with ``cfg``'s
    recipe; writes the audit to ``cfg.out`` when given. Returns the table (a pandas DataFrame)."""
    opts.check()
    for name, given in (("drop-label-issues", cfg.drop_label_issues), ("audit", cfg.audit)):
        if given:
            raise GptclfError(f"--{name} is an option of gptclf train", hint="leave it out of gptclf audit")
    cfg = cfg.resolved()
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    out = Path(cfg.out) if cfg.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
    cleanlab()  # before any training: a missing extra is a one-line error, not a wasted hour
    check_model_name(cfg.model)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rows = read_rows(cfg, examples)
    keep = ~rows.empty
    fold = assign_folds(rows, keep, opts.folds, cfg.seed, cfg.batch_size)
    kept = np.flatnonzero(keep)
    chosen = [rows.examples[i] for i in kept]
    log(f"audit: {len(rows)} rows ({len(chosen)} with text) of " + ", ".join(r["path"] for r in rows.sources.values())
        + f", labels {rows.labels}, {opts.folds} folds (stratified, seed {cfg.seed})")
    fit = cross_fit(cfg, opts, chosen, rows.labels, fold[keep], log)
    task = tasks.get(cfg.task)
    li = label_issues(task, chosen, rows.labels, fit.probs, cfg.label_delimiter)
    matches = find_duplicates([e.text for e in chosen], [rows.split[i] for i in kept], fit.vectors, opts.similarity)
    ood, outlier = find_outliers(fit.vectors, opts.outlier_threshold)
    df = table(rows, keep, fold, li, matches, ood, outlier, cfg.label_delimiter)
    record = {
        "gptclf_version": __version__, "files": rows.sources, "labels": rows.labels, "task": task.name,
        "label_delimiter": cfg.label_delimiter, "counts": counts(df), "options": {**asdict(opts), **asdict(cfg)},
        "epochs_per_fold": opts.audit_epochs or cfg.epochs, "folds": fit.folds, "trunk_cache": fit.cache_mode,
        "cache_seconds": fit.cache_seconds, "seconds": time.perf_counter() - t0}
    if out is not None:
        write_audit(out, df, record, rows.labels, task.name == tasks.MULTI_LABEL.name)
    for line in summary_lines(df, record, out):
        log(line)
    return df


def audit_first(cfg: TrainConfig, opts: AuditOptions, examples: list[Example] | None = None,
                log: Log | None = None) -> TrainConfig:
    """``gptclf train --audit``, before the run: audit ``cfg``'s data (its files, or the in-memory
    ``examples``) with its recipe into ``<out>.audit/``; returns ``cfg`` with that ``out`` (chosen now
    when left out), which the run then drops the flagged rows of (:func:`gptclf.training.recipe.prepare_data`).
    Checks first what would stop the run afterwards, so that no audit is made for nothing."""
    cfg.resolved()  # the run's options checked (--audit with --drop-label-issues...) before an audit is made
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise GptclfError("--audit runs in one process",
                          hint="run gptclf audit first, then train with --drop-label-issues DIR/audit.csv")
    out = Path(cfg.out).expanduser() if cfg.out else default_run_dir()
    if out.exists() and any(out.iterdir()):
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
    where = audit_dir(out)
    if not cfg.overwrite:
        for earlier in (where, partial_dir(out)):
            if earlier.exists():
                raise GptclfError(f"{earlier} is left from an earlier run to {out}",
                                  hint="--overwrite discards it and starts again (--resume continues an interrupted "
                                       "run with its audit), or choose another --out")
    elif where.exists():
        shutil.rmtree(where)
    run_audit(replace(cfg, out=str(where), audit=False), opts, log, examples)
    return replace(cfg, out=str(out))
