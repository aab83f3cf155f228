"""``gptclf train``: its options come from :class:`gptclf.config.TrainConfig`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import AuditOptions, TrainConfig
from ..errors import GptclfError
from .options import add_engine_options, add_options, given_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier (default: the book's chapter-6 run)")
    add_options(p, TrainConfig)
    add_options(p, AuditOptions)  # --audit's: the same options as gptclf audit's
    p.add_argument("--average-embeddings", action="store_true", default=argparse.SUPPRESS,
                   help="the chapter's bonus experiment name for --pooling mean")
    p.add_argument("--resume", default=argparse.SUPPRESS, metavar="RUN",
                   help="continue the interrupted run RUN (its --out, or RUN.partial) with the options "
                        "it was started with; other options must match them or be left out")
    add_engine_options(p, "train")
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``gptclf train``'s parsed options describe."""
    given = given_options(args, TrainConfig)
    if getattr(args, "average_embeddings", False):
        if given.get("pooling") not in (None, "mean"):
            raise GptclfError(f"--average-embeddings means --pooling mean, not --pooling {given['pooling']}")
        given["pooling"] = "mean"
    # Progress bars only on a terminal: a log file gets plain lines.
    given["progress"] = given.get("progress", True) and sys.stderr.isatty()
    return TrainConfig(**given)


class PipeSafe:
    """A stream whose reader may leave (``gptclf train 2>&1 | head -1``): once a write finds the
    pipe closed, later writes are dropped, so the log never aborts a run that is still training."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)
    try:
        out = _train(args, cfg)
        if os.environ.get("RANK", "0") != "0":
            return 0  # under torchrun, rank 0 reports
        metrics = json.loads((out / "metrics.json").read_text())
        print(json.dumps({k: metrics[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "seconds")
                          if k in metrics} | {"run": str(out)}), flush=True)
        return 0
    finally:
        for safe, stream in zip((sys.stdout, sys.stderr), streams):
            if getattr(safe, "broken", False):
                # Python flushes the standard streams at exit; a closed pipe would then print
                # a traceback and change the exit status of a run that succeeded.
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        sys.stdout, sys.stderr = streams


def _train(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """The run (a new one, or ``--resume``), here or on Ray; its directory."""
    from ..training.recipe import resume_training, run_training

    resume = getattr(args, "resume", None)
    given_audit = given_options(args, AuditOptions)
    if resume:
        if given_audit:
            raise GptclfError(f"--{sorted(given_audit)[0].replace('_', '-')}: --resume continues the run with "
                              "the audit it started with", hint="leave the audit options out")
        _check_resume(args, cfg)
    audit = AuditOptions.for_train(cfg.audit, given_audit)
    if args.engine == "ray":
        return _on_ray(args, cfg)
    if resume:
        return resume_training(resume, progress=cfg.progress)
    if audit is not None:
        from ..auditing.run import audit_first

        cfg = audit_first(cfg, audit)
    return run_training(cfg)


def _on_ray(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """``--engine ray``: the same run on Ray Train workers (gptclf.ray.train)."""
    from ..ray.train import train

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise GptclfError("--engine ray starts its own processes", hint="run it without torchrun")
    if cfg.audit:
        raise GptclfError("--audit runs here, not on Ray workers",
                          hint="run gptclf audit first, then --engine ray with --drop-label-issues DIR/audit.csv")
    return train(cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                 resume=getattr(args, "resume", None))


def _check_resume(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """``--resume``: the saved options win; a given option that differs from them is an error."""
    from ..training.recipe import saved_config

    saved = asdict(saved_config(args.resume))
    given = asdict(cfg)
    conflicts = []
    for name in sorted(set(given_options(args, TrainConfig)) - {"progress"}):
        if name == "out":
            if Path(given["out"]).resolve() != Path(saved["out"]).resolve():
                conflicts.append(f"--out {given['out']} (the run saves to {saved['out']})")
            continue
        if name in saved and saved[name] != given[name]:
            conflicts.append(f"--{name.replace('_', '-')} {given[name]} (the run has {saved[name]})")
    if conflicts:
        raise GptclfError("--resume continues a run with the options it was started with; these differ: "
                          + ", ".join(conflicts),
                          hint="leave them out (or give the same values), or start the run again with the new "
                               "options and --overwrite (which discards its checkpoints)")
