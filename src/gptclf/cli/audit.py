"""``gptclf audit``: ``gptclf train``'s data and recipe options plus the audit's
(:class:`gptclf.config.AuditOptions`); ``--out`` is the folder the audit is written to."""

from __future__ import annotations

import argparse
import time

from ..config import AuditOptions, TrainConfig
from .options import add_options, given_options
from .train import train_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="find wrong labels (cleanlab on cross-fitted probabilities, one trunk cache "
                                     "for all folds), duplicates, train/test leaks and outliers; writes "
                                     "OUT/audit.csv and OUT/report.html (pip install 'gptclf[audit]')")
    add_options(p, TrainConfig)
    add_options(p, AuditOptions)
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..auditing.run import run_audit

    cfg = train_config(args)
    cfg.out = cfg.out or f"audits/{time.strftime('%Y%m%d-%H%M%S')}"
    run_audit(cfg, AuditOptions(**given_options(args, AuditOptions)))
    return 0
