"""``gptclf export``: a self-contained copy of a model directory, a Hugging Face
transformers classifier, or ONNX graphs."""

from __future__ import annotations

import argparse
import json

FORMATS = ("gptclf", "hf", "onnx")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a self-contained copy of a model directory (the default), a "
                                      "Hugging Face transformers classifier (--format hf) or ONNX graphs "
                                      "(--format onnx)")
    p.add_argument("src", help="model directory written by 'gptclf train'")
    p.add_argument("out", help="new directory to write")
    p.add_argument("--format", choices=FORMATS, default="gptclf",
                   help="gptclf (default): a gptclf directory that loads without the base model; hf: a *ForSequenceClassification "
                        "directory that transformers' AutoModelForSequenceClassification and AutoTokenizer "
                        "load (LoRA merged; the head bias of RMSNorm models needs --no-head-bias at training); "
                        "onnx: OUT/model.onnx (fp32) and OUT/model.int8.onnx (ONNX Runtime dynamic int8), "
                        "inputs input_ids + lengths, dynamic batch and sequence axes, with onnx.json "
                        "(tokenizer, template, pooling, labels, pad id) and the run's config.json; "
                        "'gptclf predict --model OUT' runs it on onnxruntime")
    p.add_argument("--self-contained", "--merge", dest="merge", action="store_true",
                   help="what --format gptclf always writes (kept for scripts): a copy that loads without the "
                        "base model, the base's weights copied in (a run stores only the tensors training "
                        "changed), LoRA adapters merged into them (W + B@A*alpha/r)")
    p.add_argument("--no-int8", action="store_true", help="with --format onnx: write the fp32 graph only")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from ..rundir.export import export_onnx

        out = export_onnx(args.src, args.out, int8=not args.no_int8)
    elif args.format == "hf":
        from ..rundir.hf_export import export_hf

        out = export_hf(args.src, args.out)
    else:
        from ..rundir.export import export_merged

        out = export_merged(args.src, args.out)
    print(json.dumps({"exported": str(out), "format": args.format}))
    return 0
