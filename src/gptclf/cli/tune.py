"""``gptclf tune``: ``gptclf train``'s options plus the search's (:class:`gptclf.config.TuneOptions`)."""

from __future__ import annotations

import argparse
import json

from ..config import TrainConfig, TuneOptions
from .options import add_options, given_options
from .train import train_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search trainable depth, learning rate and pooling on the validation split, "
                                    "computing the frozen trunk once; saves the winner as a normal run")
    add_options(p, TrainConfig)
    add_options(p, TuneOptions)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from ..training.tune import run_tune

    out = run_tune(train_config(args), TuneOptions(**given_options(args, TuneOptions)))
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("val_accuracy", "test_accuracy", "search_winner", "seconds")
                      if k in metrics} | {"run": str(out)}))
    return 0
