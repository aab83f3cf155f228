"""``gptclf export``: a self-contained copy of a model directory."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a self-contained copy of a model directory")
    p.add_argument("src", help="model directory written by 'gptclf train'")
    p.add_argument("out", help="new directory to write")
    p.add_argument("--merge", action="store_true", required=True,
                   help="merge LoRA adapters into the base weights (W + B@A*alpha/r): the copy needs "
                        "no base model")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..rundir.export import export_merged

    out = export_merged(args.src, args.out)
    print(json.dumps({"exported": str(out)}))
    return 0
