"""``gptclf train``: its options come from :class:`gptclf.config.TrainConfig`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ..config import TrainConfig
from ..errors import GptclfError
from .options import add_options, given_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier (default: the book's chapter-6 run)")
    add_options(p, TrainConfig)
    p.add_argument("--average-embeddings", action="store_true", default=argparse.SUPPRESS,
                   help="the chapter's bonus experiment name for --pooling mean")
    p.add_argument("--resume", default=argparse.SUPPRESS, metavar="RUN",
                   help="continue the interrupted run RUN (its --out, or RUN.partial) with the options "
                        "it was started with; other options must match them or be left out")
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


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.recipe import run_training

    cfg = train_config(args)
    out = _resume(args, cfg) if getattr(args, "resume", None) else run_training(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "seconds")
                      if k in metrics} | {"run": str(out)}))
    return 0


def _resume(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """``--resume``: the saved options win; a given option that differs from them is an error."""
    from ..training.recipe import resume_training, saved_config

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
    return resume_training(args.resume, progress=cfg.progress)
