"""``gptclf predict`` (texts, a file of lines, or a table in and a table out) and
``gptclf evaluate`` (accuracy, per-class P/R/F1, confusion matrix)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.tables import FORMATS
from ..data.encoding import unicode_clean
from ..errors import GptclfError
from .options import add_engine_options


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify texts with a fine-tuned model")
    p.add_argument("texts", nargs="*", help="texts to classify (else --file, else stdin)")
    p.add_argument("--model", action="append", metavar="[NAME=]RUN",
                   help="model directory written by 'gptclf train' (default: runs/latest); repeat it as "
                        "--model NAME=RUN with --input/--output to write every model's columns, prefixed "
                        "NAME_, in one pass over the file (runs of one base share it)")
    p.add_argument("--file", default=None, help="file with one text per line ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    add_backend_options(p)
    f = p.add_argument_group("file in, file out (CSV / TSV / JSONL / JSON / Parquet / Arrow / a datasets "
                             "folder in; CSV / TSV / JSONL out; streamed in chunks)")
    f.add_argument("--input", default=None,
                   help="table to classify; every row gets one output row, in order, with its columns "
                        "kept plus predicted_label, predicted_score and p_<label> per class (a model of label "
                        "sets: predicted_labels, the labels over their thresholds)")
    f.add_argument("--output", default=None, help="where to write it (atomically: no partial file on error)")
    f.add_argument("--text-column", default="text", help="the --input column holding the text")
    f.add_argument("--format", choices=FORMATS, default=None,
                   help="input format (default: from the file suffix); the output's comes from its suffix")
    f.add_argument("--chunk-size", type=int, default=1000, help="rows read, classified and written at a time")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_options(p, "predict")
    p.set_defaults(func=cmd_predict)


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class precision/recall/F1 and confusion matrix")
    p.add_argument("--model", default="runs/latest", help="model directory written by 'gptclf train'")
    p.add_argument("--data", default=None,
                   help="labelled CSV/TSV/JSONL/JSON/Parquet/Arrow file or datasets folder, or 'sms-spam' (its "
                        "chapter-6 test split); default: "
                        "the run's own test split (test.jsonl in the model directory)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-delimiter", default=None, metavar="SEP",
                   help="models of label sets: what separates the labels in a string cell (default: the run's "
                        "--label-delimiter)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    add_backend_options(p)
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write DIR/report.html, DIR/metrics.json and DIR/confusion-matrix.png")
    p.add_argument("--mistakes", type=int, default=20, help="most confident mistakes listed in the report")
    p.set_defaults(func=cmd_evaluate)


INT8_HELP = ("int8: ONNX Runtime's dynamic quantization of the blocks' linears, per output channel, "
             "the outlier-sensitive ones kept fp32 (CPU; implies --backend onnxruntime)")
BACKEND_HELP = ("torch, or onnxruntime (CPU: the graph of 'gptclf export --format onnx', exported into "
                "the cache on first use); auto: onnxruntime for --int8 or an exported directory, else torch")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """--backend, --int8 and --threads: shared by predict, evaluate and serve."""
    from ..inference.classifier import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--int8", action="store_true", help=INT8_HELP)
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads: onnxruntime's (0: one per physical core), or torch's on the CPU "
                        "(0: torch's default)")
    p.add_argument("--static-shapes", choices=("auto", "on", "off"), default="auto",
                   help="torch backend: pad batches to a few fixed widths and replay one CUDA graph per "
                        "shape (auto: on for CUDA; off: the eager path; results are the same)")


def load_classifier(args: argparse.Namespace):
    """The Classifier that --model, --device, --backend, --int8 and --threads describe."""
    from ..inference.classifier import Classifier

    if args.threads < 0:
        raise GptclfError(f"--threads must be 0 (automatic) or more, not {args.threads}")
    return Classifier.load(args.model, device=args.device, quantize="int8" if args.int8 else None,
                           backend=args.backend, threads=args.threads, static_shapes=args.static_shapes)


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
            from ..data.text import split_lines

            return [line for line in split_lines(sys.stdin.read()) if line.strip()]
        return _text_lines(stdin.read(), "stdin")
    raise GptclfError("no texts to classify", hint="pass texts as arguments, --file FILE, or pipe them on stdin")


def _text_lines(raw: bytes, where: str) -> list[str]:
    """Non-blank lines; bytes that are not UTF-8 are read as cp1252 (what Windows tools write)."""
    from ..data.text import decode_text, split_lines

    return [line for line in split_lines(decode_text(raw, where)) if line.strip()]


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise GptclfError(f"--{name} must be at least 1, not {value}")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.group import parse_model_specs

    _positive("batch-size", args.batch_size)
    given = [args.model] if isinstance(args.model, str) else args.model  # a Namespace built by hand
    specs = parse_model_specs(given or ["runs/latest"])
    if len(specs) > 1:
        return _predict_file_models(args, specs)
    args.model = str(specs[0][1])
    if args.engine == "ray":
        return _predict_ray(args)
    if args.input or args.output:
        return _predict_file(args)
    texts = _read_texts(args)
    clf = load_classifier(args)
    for text, r in zip(texts, clf.predict(texts, batch_size=args.batch_size)):
        text = unicode_clean(text)  # an argv byte that is not UTF-8 arrives as a lone surrogate
        if args.json:
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        else:
            print(f"{clf.task.decision_text(r)}\t{text}")
    return 0


def _predict_file(args: argparse.Namespace) -> int:
    from ..inference.batch_files import predict_file

    if not (args.input and args.output):
        raise GptclfError("--input and --output go together", hint="gptclf predict --input in.csv --output out.csv")
    if args.texts or args.file:
        raise GptclfError("pass texts, --file, or --input/--output, not several")
    if not Path(args.input).expanduser().exists():  # before the model loads: fail fast
        raise GptclfError(f"{args.input}: no such file")
    clf = load_classifier(args)
    res = predict_file(clf, args.input, args.output, text_column=args.text_column, chunk_size=args.chunk_size,
                       batch_size=args.batch_size, input_format=args.format,
                       progress=not args.quiet and sys.stderr.isatty(),
                       log=None if args.quiet or sys.stderr.isatty() else lambda line: print(line, file=sys.stderr))
    print(f"wrote {res.rows} rows to {res.output} in {res.seconds:.1f}s", file=sys.stderr)
    return 0


def _predict_file_models(args: argparse.Namespace, specs: list) -> int:
    """Several ``--model NAME=RUN``: every model's columns in one pass over ``--input``."""
    from ..inference.batch_group import predict_file_group
    from ..inference.group import ModelGroup

    if args.engine == "ray" or not (args.input and args.output) or args.texts or args.file:
        raise GptclfError("several --model classify --input into --output (one pass, every model's columns)",
                          hint="gptclf predict --model spam=RUN1 --model topic=RUN2 --input in.csv --output out.csv")
    if not Path(args.input).expanduser().exists():  # before the models load: fail fast
        raise GptclfError(f"{args.input}: no such file")
    if args.threads < 0:
        raise GptclfError(f"--threads must be 0 (automatic) or more, not {args.threads}")
    group = ModelGroup.load(specs, device=args.device, quantize="int8" if args.int8 else None,
                            backend=args.backend, threads=args.threads, static_shapes=args.static_shapes)
    res = predict_file_group(group, args.input, args.output, text_column=args.text_column,
                             chunk_size=args.chunk_size, batch_size=args.batch_size, input_format=args.format)
    print(f"wrote {res.rows} rows of {len(specs)} models to {res.output} in {res.seconds:.1f}s", file=sys.stderr)
    return 0


def _predict_ray(args: argparse.Namespace) -> int:
    """``--engine ray``: the table(s) of --input scored on Ray Data into the directory --output."""
    from ..ray.cluster import connect, require_ray
    from ..ray.predict import check_job, check_resources, predict_files

    if not (args.input and args.output) or args.texts or args.file:
        raise GptclfError("--engine ray classifies --input into the directory --output",
                          hint="gptclf predict --engine ray --input shards/ --output scored/")
    _positive("workers", args.workers)
    require_ray()  # a missing Ray is the first thing to say
    check_job(args.input, args.model, args.output, input_format=args.format, output_format=args.output_format,
              text_column=args.text_column)  # before joining a cluster: a bad job fails in a second
    ray = connect(args.address)
    check_resources(ray, args.workers, args.cpus_per_worker, args.gpus_per_worker, can_grow=args.address is not None)
    if args.quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
    res = predict_files(args.input, args.model, args.output, input_format=args.format,
                        output_format=args.output_format, text_column=args.text_column,
                        batch_size=args.batch_size, rows_per_batch=args.chunk_size, concurrency=args.workers,
                        num_cpus=args.cpus_per_worker, num_gpus=args.gpus_per_worker, backend=args.backend,
                        int8=args.int8, threads=args.threads)
    print(f"wrote {res.rows} rows to {res.output} in {res.seconds:.1f}s "
          f"({res.rows / max(res.seconds, 1e-9):.0f} rows/s)", file=sys.stderr)
    return 0


def _evaluation_data(args: argparse.Namespace, clf) -> tuple[list, str]:  # noqa: ANN001
    """``--data``, else the run's own test split (test.jsonl; for older runs of the SMS data, its
    chapter-6 split drawn again with the run's seed)."""
    from ..config import TrainConfig
    from ..data.sms_spam import SMS_SPAM_NAMES, is_sms_spam
    from ..data.splits import drop_empty_texts, load_splits
    from ..data.tables import DEFAULT_LABEL_DELIMITER, read_table
    from ..rundir.save import TEST_SPLIT

    train_cfg = clf.run_config.train or {}
    reader = clf.task.label_reader(args.label_delimiter or train_cfg.get("label_delimiter") or DEFAULT_LABEL_DELIMITER)
    data = args.data
    if data is None:
        own = Path(args.model).expanduser() / TEST_SPLIT
        if own.is_file():
            return read_table(own, "text", "label", read_labels=reader), f"the run's test split ({own})"
        if not is_sms_spam(str(train_cfg.get("data", "sms-spam"))):
            raise GptclfError(f"{args.model} has no {TEST_SPLIT} (a run from an older gptclf) and was not "
                              "trained on the SMS data", hint="pass the labelled test file with --data FILE")
        data = "sms-spam"
    if data.lower() in SMS_SPAM_NAMES:
        # The run's own options where it recorded them, else the defaults TrainConfig gives this data.
        sms = TrainConfig(data=data, seed=train_cfg.get("seed", 123), balance=train_cfg.get("balance"),
                          split=train_cfg.get("split")).resolved()
        splits = load_splits(data, seed=sms.seed, balance=sms.balance, split=sms.split)
        return splits.test, "sms-spam (chapter-6 test split)"
    return drop_empty_texts(read_table(data, args.text_column, args.label_column, read_labels=reader), data), data


def cmd_evaluate(args: argparse.Namespace) -> int:
    _positive("batch-size", args.batch_size)
    clf = load_classifier(args)
    examples, where = _evaluation_data(args, clf)
    if not examples:
        raise GptclfError(f"{where}: no texts to evaluate")
    report = clf.evaluate([e.text for e in examples],
                          [clf.task.gold(e) for e in examples], args.batch_size,
                          mistakes=args.mistakes if args.report else 0)
    report["data"] = where
    if args.report:
        from ..rundir.report import write_evaluation_report

        page = write_evaluation_report(args.report, report, model=str(args.model), data=where, task=clf.task)
        print(f"report: {page}", file=sys.stderr)
        report.pop("mistakes", None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"data: {where} ({report['n']} texts)")
    for line in clf.task.report_lines(report):
        print(line)
    return 0
