"""``gptclf export``: a self-contained copy of a model directory, or a Hugging Face one."""

from __future__ import annotations

import argparse
import json

from ..errors import GptclfError

FORMATS = ("gptclf", "hf")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a self-contained copy of a model directory (--merge), or a "
                                      "Hugging Face transformers classifier (--format hf)")
    p.add_argument("src", help="model directory written by 'gptclf train'")
    p.add_argument("out", help="new directory to write")
    p.add_argument("--format", choices=FORMATS, default="gptclf",
                   help="gptclf: a gptclf directory (needs --merge); hf: a *ForSequenceClassification "
                        "directory that transformers' AutoModelForSequenceClassification and AutoTokenizer "
                        "load (LoRA merged; the head bias of RMSNorm models needs --no-head-bias at training)")
    p.add_argument("--merge", action="store_true",
                   help="merge LoRA adapters into the base weights (W + B@A*alpha/r): the copy needs "
                        "no base model")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from ..rundir.hf_export import export_hf

        out = export_hf(args.src, args.out)
    else:
        if not args.merge:
            raise GptclfError("gptclf export needs --merge (a merged gptclf directory) or --format hf")
        from ..rundir.export import export_merged

        out = export_merged(args.src, args.out)
    print(json.dumps({"exported": str(out), "format": args.format}))
    return 0
