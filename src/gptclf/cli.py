"""The ``gptclf`` command line: ``train``, ``predict``, ``evaluate``.

Every option's help is the documentation; ``gptclf train`` with no options is the
book's chapter-6 run. User errors print one message and a hint, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import GptclfError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier (default: the book's chapter-6 run)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="gpt2-small",
                   help="backbone: gpt2-small|medium|large|xl, smollm2-135m (offline), a local "
                        "Hugging Face directory, a .gguf file, or a hub id")
    g.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="pretrained weights, or train from random initialisation")
    g.add_argument("--trainable", default="last_block",
                   help="last_layer (head only), last_block (the book), last_two_blocks, all, a "
                        "number N of last blocks (with the final norm and the head), or lora "
                        "(low-rank adapters in every block + final norm + head; the book's appendix E)")
    g.add_argument("--pooling", choices=["last", "last-nonpad", "mean", "first"], default=None,
                   help="which position classifies: last real token (default), position -1 "
                        "(the book's; needs --padding longest), the mean over real tokens, or the "
                        "first token (a bonus experiment of the chapter)")
    g.add_argument("--average-embeddings", action="store_true",
                   help="the chapter's bonus experiment name for --pooling mean")
    g.add_argument("--no-causal-mask", action="store_true",
                   help="let every token attend to the whole text (the chapter's bonus experiment); "
                        "padding stays hidden by a padding mask")
    lo = p.add_argument_group("LoRA (--trainable lora)")
    lo.add_argument("--lora-rank", type=int, default=16, help="rank r of each adapter (the book's 16)")
    lo.add_argument("--lora-alpha", type=float, default=16.0, help="scale: the update is B@A*alpha/r")
    lo.add_argument("--lora-targets", default=None,
                    help="comma-separated linear layers of each block (default: "
                         "att.qkv,att.out_proj,ff.fc,ff.proj, i.e. attention and MLP)")
    lo.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="sms-spam",
                   help="'sms-spam' (downloaded, checksum-verified, cached) or a CSV/TSV/JSONL file")
    d.add_argument("--val", default=None, help="your own validation file (else a seeded 10%% split)")
    d.add_argument("--test", default=None, help="your own test file (else a seeded 20%% split)")
    d.add_argument("--text-column", default="text")
    d.add_argument("--label-column", default="label")
    d.add_argument("--balance", choices=["undersample", "none"], default="undersample",
                   help="undersample every class to the smallest (the book) or keep all data")
    d.add_argument("--max-length", type=int, default=None,
                   help="truncate texts to this many tokens (default: the longest training text)")
    d.add_argument("--padding", choices=["dynamic", "longest"], default=None,
                   help="pad each batch to its longest text (default) or every text to --max-length (the book)")
    d.add_argument("--context-length", type=int, default=None,
                   help="pad every text to N tokens (= --padding longest --max-length N); 1024 is the "
                        "chapter's 'pad to the full context' experiment for GPT-2")
    t = p.add_argument_group("training (defaults: the book's)")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--eval-freq", type=int, default=50, help="estimate losses every N steps")
    t.add_argument("--eval-iter", type=int, default=5, help="... on this many batches")
    t.add_argument("--eval-batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=123)
    s = p.add_argument_group("speed")
    s.add_argument("--reference", action="store_true",
                   help="run the book's exact path (pad to longest, position -1, full forward every "
                        "step, no cache) to measure the speed-up honestly")
    s.add_argument("--cache", choices=["auto", "off", "ram", "disk"], default="auto",
                   help="frozen-trunk cache: compute the frozen blocks once per text")
    s.add_argument("--cache-max-gb", type=float, default=None,
                   help="RAM budget for the cache before it spills to disk (default: half the free RAM)")
    s.add_argument("--group-by-length", type=int, default=4,
                   help="sort each group of N shuffled batches by length (0: plain shuffle)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 autocast on GPUs that support it, else fp32")
    s.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    s.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: much less memory "
                        "for --trainable all on large models, about a third more compute")
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>; runs/latest links it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify texts with a fine-tuned model")
    p.add_argument("texts", nargs="*", help="texts to classify (else --file, else stdin)")
    p.add_argument("--model", default="runs/latest", help="model directory written by 'gptclf train'")
    p.add_argument("--file", default=None, help="file with one text per line ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (CPU)")
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class precision/recall/F1 and confusion matrix")
    p.add_argument("--model", default="runs/latest", help="model directory written by 'gptclf train'")
    p.add_argument("--data", default="sms-spam",
                   help="labelled CSV/TSV/JSONL file, or 'sms-spam' (its chapter-6 test split)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (CPU)")
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a self-contained copy of a model directory")
    p.add_argument("src", help="model directory written by 'gptclf train'")
    p.add_argument("out", help="new directory to write")
    p.add_argument("--merge", action="store_true", required=True,
                   help="merge LoRA adapters into the base weights (W + B@A*alpha/r): the copy needs "
                        "no base model")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptclf",
        description="Fine-tune a pretrained decoder LLM into a text classifier (chapter 6 of "
                    "'Build a Large Language Model (From Scratch)').")
    parser.add_argument("--version", action="version", version=f"gptclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_export(sub)
    return parser


# ---------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run_training

    if args.average_embeddings:
        if args.pooling not in (None, "mean"):
            raise GptclfError(f"--average-embeddings means --pooling mean, not --pooling {args.pooling}")
        args.pooling = "mean"
    cfg = TrainConfig(
        model=args.model, init=args.init, data=args.data, val=args.val, test=args.test,
        text_column=args.text_column, label_column=args.label_column, balance=args.balance,
        seed=args.seed, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, eval_freq=args.eval_freq, eval_iter=args.eval_iter,
        eval_batch_size=args.eval_batch_size, trainable=args.trainable, pooling=args.pooling,
        padding=args.padding, max_length=args.max_length, group_by_length=args.group_by_length,
        cache=args.cache, cache_max_gb=args.cache_max_gb, reference=args.reference,
        device=args.device, precision=args.precision, compile=args.compile, out=args.out,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout, grad_checkpointing=args.grad_checkpointing,
        causal_mask=not args.no_causal_mask, context_length=args.context_length,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    out = run_training(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "seconds")
                      if k in metrics} | {"run": str(out)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .lora import export_merged

    out = export_merged(args.src, args.out)
    print(json.dumps({"exported": str(out)}))
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    if args.file and args.file != "-":
        path = Path(args.file)
        if not path.exists():
            raise GptclfError(f"{path}: no such file")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
        return [line for line in text.splitlines() if line.strip()]
    if args.file == "-" or not sys.stdin.isatty():
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    raise GptclfError("no texts to classify", hint="pass texts as arguments, --file FILE, or pipe them on stdin")


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Classifier

    texts = _read_texts(args)
    clf = Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None)
    for text, r in zip(texts, clf.predict(texts, batch_size=args.batch_size)):
        if args.json:
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        else:
            print(f"{r['label']}\t{r['score']:.4f}\t{text}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import SMS_SPAM_NAMES, drop_empty_texts, load_splits, read_table
    from .predict import Classifier

    clf = Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None)
    if args.data.lower() in SMS_SPAM_NAMES:
        train_cfg = clf.config.get("train", {})
        splits = load_splits(args.data, seed=train_cfg.get("seed", 123),
                             balance=train_cfg.get("balance", "undersample"))
        examples, where = splits.test, "sms-spam (chapter-6 test split)"
    else:
        examples = drop_empty_texts(read_table(args.data, args.text_column, args.label_column), args.data)
        where = args.data
    report = clf.evaluate([e.text for e in examples], [e.label for e in examples], args.batch_size)
    report["data"] = where
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"data: {where} ({report['n']} texts)")
    print(f"accuracy: {report['accuracy'] * 100:.2f}%   loss: {report['loss']:.4f}"
          + (f"   ROC-AUC: {report['roc_auc']:.4f}" if report.get("roc_auc") is not None else ""))
    w = max(len(x) for x in report["labels"]) + 2
    print(f"{'label':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for lab, m in report["per_class"].items():
        print(f"{lab:<{w}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>10d}")
    print("confusion matrix (rows: true, columns: predicted)")
    print(" " * w + "".join(f"{lab:>10}" for lab in report["labels"]))
    for lab, row in zip(report["labels"], report["confusion_matrix"]):
        print(f"{lab:<{w}}" + "".join(f"{v:>10d}" for v in row))
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except GptclfError as e:
        print(f"gptclf: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gptclf predict ... | head`: the reader left; that's fine.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
