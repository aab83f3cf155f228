"""The ``gptclf`` command line: ``train``, ``predict``, ``evaluate``, ``serve``.

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
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .errors import GptclfError

if TYPE_CHECKING:
    from .train import TrainConfig


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier (default: the book's chapter-6 run)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="gpt2-small",
                   help="backbone: gpt2-small|medium|large|xl, smollm2-135m (offline), a local "
                        "Hugging Face directory, a .gguf file, or a hub id")
    g.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="pretrained weights, or train from random initialisation")
    g.add_argument("--trainable", default=None,
                   help="last_layer (head only), last_block (the book), last_two_blocks, all, a "
                        "number N of last blocks (with the final norm and the head), or lora "
                        "(low-rank adapters in every block + final norm + head; the book's appendix E). "
                        "Default: the backbone's recipe (the book's last_block for GPT-2, "
                        "last_two_blocks for smollm2-135m)")
    g.add_argument("--pooling", choices=["last", "last-nonpad", "mean", "first"], default=None,
                   help="which position classifies: last real token (default), position -1 "
                        "(the book's; needs --padding longest), the mean over real tokens, or the "
                        "first token (a bonus experiment of the chapter)")
    g.add_argument("--template", default=None,
                   help="wrap each text before tokenizing, e.g. 'Message: {text}\\nIs this message "
                        "spam?' (\\n is a newline); saved with the model and used at prediction. "
                        "With last-token pooling the classifier then reads the question's last token")
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
    d.add_argument("--balance", choices=["undersample", "none", "weight"], default="undersample",
                   help="undersample every class to the smallest (the book), keep all data, or keep "
                        "all data and weight the training loss by inverse class frequency")
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
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the backbone's recipe; the book's 5e-5 for GPT-2, "
                        "2e-4 for smollm2-135m)")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--eval-freq", type=int, default=50, help="estimate losses every N steps")
    t.add_argument("--eval-iter", type=int, default=5, help="... on this many batches")
    t.add_argument("--eval-batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=123)
    c = p.add_argument_group("training controls (default: off, the book's loop)")
    c.add_argument("--grad-accum", type=int, default=1, metavar="N",
                   help="accumulate N batches per optimizer step (effective batch: batch size x N "
                        "x processes; the loss is that of one big batch)")
    c.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"], default="constant",
                   help="after warmup: keep --lr, or decay it to 0 by the last step")
    c.add_argument("--warmup-steps", type=int, default=0,
                   help="raise the lr linearly over this many optimizer steps")
    c.add_argument("--warmup-ratio", type=float, default=0.0,
                   help="... or over this fraction of all optimizer steps")
    c.add_argument("--clip-grad-norm", type=float, default=None, metavar="MAX",
                   help="clip the gradients' global L2 norm to MAX")
    c.add_argument("--early-stopping-metric", choices=["val_loss", "val_accuracy"], default=None,
                   help="stop when this metric, on the full validation set at each epoch end, has "
                        "not improved for --patience epochs; the saved model is the best epoch's")
    c.add_argument("--patience", type=int, default=None,
                   help="epochs without a gain before early stopping (unset: 3)")
    c.add_argument("--keep-best", action="store_true",
                   help="save the best epoch's weights by full validation loss, without stopping "
                        "early (--early-stopping-metric keeps the best epoch's too)")
    c.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                   help="write a checkpoint to <out>.partial/ every N optimizer steps and at each "
                        "epoch end (0: never)")
    c.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the interrupted run RUN (its --out, or RUN.partial) with the options "
                        "it was started with; other options must match them or be left out")
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
    f = p.add_argument_group("file in, file out (CSV / TSV / JSONL, streamed in chunks)")
    f.add_argument("--input", default=None,
                   help="table to classify; every row gets one output row, in order, with its columns "
                        "kept plus predicted_label, predicted_score and p_<label> per class")
    f.add_argument("--output", default=None, help="where to write it (atomically: no partial file on error)")
    f.add_argument("--text-column", default="text", help="the --input column holding the text")
    f.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None,
                   help="input format (default: from the file suffix); the output's comes from its suffix")
    f.add_argument("--chunk-size", type=int, default=1000, help="rows read, classified and written at a time")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write DIR/report.html, DIR/metrics.json and DIR/confusion-matrix.png")
    p.add_argument("--mistakes", type=int, default=20, help="most confident mistakes listed in the report")
    p.set_defaults(func=cmd_evaluate)


def _given_train_options(argv: Sequence[str]) -> set[str]:
    """Which ``gptclf train`` options the command line actually gave (not their defaults)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    for action in train._actions:
        action.default = argparse.SUPPRESS  # absent options stay out of the namespace
    return set(vars(parser.parse_args(list(argv)))) - {"command", "func"}


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .serve_settings import DEFAULTS as d

    p = sub.add_parser("serve", help="HTTP API and web page for a fine-tuned model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/latest", help="model directory written by 'gptclf train'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the service to the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (CPU)")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="texts per forward pass")
    b.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="under load (the previous batch was shared), how long a lone waiting request "
                        "holds the batch open for others")
    b.add_argument("--no-batching", action="store_true", help="one request per forward pass")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-queue", type=int, default=d.max_queue,
                     help="requests waiting for the model before new ones get 503 + Retry-After")
    lim.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request before 504")
    lim.add_argument("--client-timeout", type=float, default=d.client_timeout_s,
                     help="seconds a client has to send its request headers (else the connection is closed) "
                          "and then its body (else 408): slow or stalled clients cannot hold connections")
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="413 above this")
    lim.add_argument("--max-texts", type=int, default=d.max_texts, help="texts per request; 413 above")
    lim.add_argument("--max-text-chars", type=int, default=d.max_text_chars, help="characters per text; 413 above")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable; off by default)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


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
    _add_serve(sub)
    _add_export(sub)
    return parser


# ---------------------------------------------------------------------------- commands


def train_config(args: argparse.Namespace) -> "TrainConfig":
    """The :class:`TrainConfig` that ``gptclf train``'s parsed options describe."""
    from .train import TrainConfig

    if args.average_embeddings:
        if args.pooling not in (None, "mean"):
            raise GptclfError(f"--average-embeddings means --pooling mean, not --pooling {args.pooling}")
        args.pooling = "mean"
    return TrainConfig(
        grad_accum=args.grad_accum, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio, clip_grad_norm=args.clip_grad_norm,
        early_stopping_metric=args.early_stopping_metric, patience=args.patience,
        keep_best=args.keep_best, checkpoint_every=args.checkpoint_every,
        model=args.model, init=args.init, data=args.data, val=args.val, test=args.test,
        text_column=args.text_column, label_column=args.label_column, balance=args.balance,
        seed=args.seed, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, eval_freq=args.eval_freq, eval_iter=args.eval_iter,
        eval_batch_size=args.eval_batch_size, trainable=args.trainable, pooling=args.pooling,
        template=_unescape(args.template),
        padding=args.padding, max_length=args.max_length, group_by_length=args.group_by_length,
        cache=args.cache, cache_max_gb=args.cache_max_gb, reference=args.reference,
        device=args.device, precision=args.precision, compile=args.compile, out=args.out,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout, grad_checkpointing=args.grad_checkpointing,
        causal_mask=not args.no_causal_mask, context_length=args.context_length,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_training

    cfg = train_config(args)
    if args.resume:
        out = _resume(args, cfg)
    else:
        out = run_training(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "seconds")
                      if k in metrics} | {"run": str(out)}))
    return 0


def _unescape(s: str | None) -> str | None:
    """Let a shell user write newlines and tabs in --template as \\n and \\t."""
    return None if s is None else s.replace("\\n", "\n").replace("\\t", "\t")


def _resume(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """``--resume``: the saved options win; a given option that differs from them is an error."""
    from dataclasses import asdict

    from .train import resume_training, saved_config

    saved = asdict(saved_config(args.resume))
    given = asdict(cfg)
    names = {"quiet": "progress"}  # argparse dest -> TrainConfig field, where they differ
    conflicts = []
    for dest in sorted(_given_train_options(getattr(args, "argv", sys.argv[1:])) - {"resume", "quiet"}):
        field = names.get(dest, dest)
        if field == "out":
            if Path(given["out"]).resolve() != Path(saved["out"]).resolve():
                conflicts.append(f"--out {given['out']} (the run saves to {saved['out']})")
            continue
        if field in saved and saved[field] != given[field]:
            conflicts.append(f"--{dest.replace('_', '-')} {given[field]} (the run has {saved[field]})")
    if conflicts:
        raise GptclfError("--resume continues a run with the options it was started with; these differ: "
                          + ", ".join(conflicts),
                          hint="leave them out (or give the same values), or start a new run")
    return resume_training(args.resume, progress=cfg.progress)


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
        if path.is_dir():
            raise GptclfError(f"{path} is a directory", hint="--file takes a text file, one text per line")
        return _text_lines(path.read_bytes(), str(path))
    if args.file == "-" or not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:  # a StringIO standing in for stdin (tests, embedding)
            from .data import split_lines

            return [line for line in split_lines(sys.stdin.read()) if line.strip()]
        return _text_lines(stdin.read(), "stdin")
    raise GptclfError("no texts to classify", hint="pass texts as arguments, --file FILE, or pipe them on stdin")


def _text_lines(raw: bytes, where: str) -> list[str]:
    """Non-blank lines; bytes that are not UTF-8 are read as cp1252 (what Windows tools write)."""
    from .data import decode_text, split_lines

    return [line for line in split_lines(decode_text(raw, where)) if line.strip()]


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise GptclfError(f"--{name} must be at least 1, not {value}")


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Classifier

    _positive("batch-size", args.batch_size)
    if args.input or args.output:
        return _predict_file(args)
    texts = _read_texts(args)
    clf = Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None)
    for text, r in zip(texts, clf.predict(texts, batch_size=args.batch_size)):
        if args.json:
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        else:
            print(f"{r['label']}\t{r['score']:.4f}\t{text}")
    return 0


def _predict_file(args: argparse.Namespace) -> int:
    from .batchpredict import predict_file
    from .predict import Classifier

    if not (args.input and args.output):
        raise GptclfError("--input and --output go together", hint="gptclf predict --input in.csv --output out.csv")
    if args.texts or args.file:
        raise GptclfError("pass texts, --file, or --input/--output, not several")
    if not Path(args.input).expanduser().exists():  # before the model loads: fail fast
        raise GptclfError(f"{args.input}: no such file")
    clf = Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None)
    res = predict_file(clf, args.input, args.output, text_column=args.text_column, chunk_size=args.chunk_size,
                       batch_size=args.batch_size, input_format=args.format,
                       progress=not args.quiet and sys.stderr.isatty())
    print(f"wrote {res.rows} rows to {res.output} in {res.seconds:.1f}s", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve_settings import ServeSettings

    settings = ServeSettings(
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, batching=not args.no_batching,
        max_queue=args.max_queue, timeout_s=args.timeout,
        client_timeout_s=args.client_timeout, max_body_bytes=args.max_body_bytes,
        max_texts=args.max_texts, max_text_chars=args.max_text_chars, cors_origins=list(args.cors_origin))
    settings.check()
    from .data import DataWarning
    from .serve import serve

    warnings.filterwarnings("once", category=DataWarning)  # truncation: say it once, not per request
    serve(args.model, args.host, args.port, settings, device=args.device,
          quantize="int8" if args.int8 else None, log_level=args.log_level, access_log=args.access_log)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import SMS_SPAM_NAMES, drop_empty_texts, load_splits, read_table
    from .predict import Classifier

    _positive("batch-size", args.batch_size)
    clf = Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None)
    if args.data.lower() in SMS_SPAM_NAMES:
        train_cfg = clf.config.get("train", {})
        splits = load_splits(args.data, seed=train_cfg.get("seed", 123),
                             balance=train_cfg.get("balance", "undersample"))
        examples, where = splits.test, "sms-spam (chapter-6 test split)"
    else:
        examples = drop_empty_texts(read_table(args.data, args.text_column, args.label_column), args.data)
        where = args.data
    if not examples:
        raise GptclfError(f"{where}: no texts to evaluate")
    report = clf.evaluate([e.text for e in examples], [e.label for e in examples], args.batch_size,
                          mistakes=args.mistakes if args.report else 0)
    report["data"] = where
    if args.report:
        from .report import write_evaluation_report

        page = write_evaluation_report(args.report, report, model=str(args.model), data=where)
        print(f"report: {page}", file=sys.stderr)
        report.pop("mistakes", None)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
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
    except OSError as e:
        # A file that cannot be read or written (permissions, a full disk): the system's
        # own message names the file, and there is nothing in gptclf to debug.
        print(f"gptclf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
