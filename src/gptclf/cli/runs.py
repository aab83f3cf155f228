"""``gptclf runs [DIR]``: a table of the runs under ``runs/`` (gptclf.rundir.listing)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs under DIR (default runs/): date, base model, data, labels, "
                                    "test accuracy, size, kept epoch, and what is wrong with any that is not "
                                    "a finished run")
    p.add_argument("dir", nargs="?", default="runs", help="the directory that holds the runs (default runs), "
                                                           "or one run directory")
    p.add_argument("--json", action="store_true", help="one JSON list of objects instead of the table")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from ..rundir.listing import format_runs, list_runs, runs_json

    rows = list_runs(args.dir)
    if args.json:
        print(json.dumps(runs_json(rows)))
    elif rows:
        print(format_runs(rows))
    else:
        print(f"no runs in {args.dir}")
    return 0
