"""Batch prediction over a file: ``gptclf predict --input FILE --output FILE``.

The input (any table :class:`gptclf.data.tables.Table` reads: CSV, TSV, JSONL, JSON) is
read as a stream, ``chunk_size`` rows at a time, so memory stays bounded whatever the file
size. Every input row gives exactly one output row, in input order (an empty text still
gets one), with every input column kept and these columns added:

* the decision, as the run's task writes it (:mod:`gptclf.tasks`): ``predicted_label`` (the
  most probable label) and ``predicted_score`` (its probability); for label sets
  ``predicted_labels``, those whose probability reaches their threshold, most probable first,
  a list in JSONL and joined by the run's ``--label-delimiter`` (``a|b``; empty for none) in
  CSV/TSV, the way ``gptclf train`` reads them back
* ``p_<label>``        one probability column per class (in the model's label order)
* ``truncated``        whether the text was longer than the model's ``max_length`` tokens
  and only its start was read (``true``/``false``); a chunked model's (``--long-text chunk``):
  whether it needed more than its ``max_windows`` windows
* ``windows``          a chunked model's only: how many windows the text was read as

With a :class:`gptclf.inference.classifier.Classifier`, the next chunks are read and
tokenized in a worker thread (a bounded queue of ``PREFETCH`` chunks) while the model runs
on the current one; the rows still come out in input order.

The output (CSV, TSV or JSONL, from its suffix) is written to a temporary file beside it
and renamed over it only when every row is written (:func:`gptclf.files.atomic_path`): an
error or Ctrl-C leaves no partial file behind. An output that is the input file, or whose
suffix names a format not written here (``.parquet``, ``.json``), is refused before any row.
"""

from __future__ import annotations

import contextlib
import csv
import json
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .. import tasks
from ..data.encoding import unicode_clean
from ..data.tables import ARROW_SUFFIXES, DEFAULT_LABEL_DELIMITER, SUFFIXES, Row, Table, cell_text, find_column
from ..errors import DataWarning, GptclfError, TextError
from ..files import atomic_path
from ..progress import PlainProgress
from ..tasks import Task

PROB_PREFIX = "p_"
TRUNCATED_COLUMN = "truncated"
WINDOWS_COLUMN = "windows"
OUTPUT_FORMATS = ("csv", "tsv", "jsonl")
PREFETCH = 2  # chunks read and tokenized ahead of the model
OUTPUT_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
READABLE_SUFFIXES = {**SUFFIXES, **ARROW_SUFFIXES}  # a name that promises one of these must get it


def added_columns(labels: list[str], task: Task = tasks.SINGLE_LABEL) -> list[str]:
    return task.file_columns(labels) + [f"{PROB_PREFIX}{lab}" for lab in labels] + [TRUNCATED_COLUMN]


def _added_values(task: Task, labels: list[str], p: Any, thresholds: Any, delimiter: str | None) -> list[Any]:
    """The added cells of one row but ``truncated``: the decision, then one probability per label."""
    return task.file_cells(labels, p, thresholds, delimiter) + [round(float(v), 6) for v in p]


def prediction_columns(classifier: Any, probs: Any, flags: list[bool], out_fmt: str) -> dict[str, list[Any]]:
    """The added columns of a chunk, by name, as :func:`predict_file` writes them in ``out_fmt``
    (``jsonl``, or any columnar format such as Parquet: label sets as lists and ``truncated``
    as booleans; ``csv``/``tsv``: label sets joined by the run's delimiter, ``"true"``/``"false"``).
    For other writers of the same output (``gptclf predict --engine ray``)."""
    labels = list(classifier.labels)
    task = getattr(classifier, "task", tasks.SINGLE_LABEL)
    thresholds = getattr(classifier, "thresholds", np.full(len(labels), 0.5))
    delimiter = _label_delimiter(classifier) if out_fmt in ("csv", "tsv") else None
    names = added_columns(labels, task)
    rows = [_added_values(task, labels, p, thresholds, delimiter) for p in probs]
    columns = {name: [r[i] for r in rows] for i, name in enumerate(names[:-1])}
    columns[TRUNCATED_COLUMN] = [("true" if c else "false") if delimiter else bool(c) for c in flags]
    return columns


def iter_chunks(rows: Iterable[Row], chunk_size: int) -> Iterator[list[Row]]:
    """Lists of at most ``chunk_size`` rows; only one list is alive at a time."""
    if chunk_size < 1:
        raise GptclfError(f"--chunk-size must be at least 1, not {chunk_size}")
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class BatchResult:
    rows: int
    chunks: int
    seconds: float
    output: Path


def predict_file(classifier: Any, input_path: str | Path, output_path: str | Path, *,
                 text_column: str = "text", chunk_size: int = 1000, batch_size: int = 32,
                 input_format: str | None = None, output_format: str | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None) -> BatchResult:
    """Classify every row of ``input_path`` and write ``output_path`` (see the module doc).

    ``classifier`` needs ``labels`` and ``predict_proba(texts, batch_size)`` (a
    :class:`gptclf.inference.classifier.Classifier`, whose ``encode_with_flags`` and
    ``proba_from_ids`` let a worker thread tokenize ahead). ``progress``: a bar on the
    terminal; ``log``: plain progress lines instead (for logs and pipes).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    output_path = Path(output_path).expanduser()
    labels = list(classifier.labels)
    size = Path(input_path).expanduser().stat().st_size if Path(input_path).expanduser().is_file() else None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="predict", disable=not progress, file=sys.stderr)
    lines = PlainProgress(f"predict: {Path(input_path).name}", size or 0, "bytes", log or print,
                          enabled=log is not None and size is not None)

    def read(n: int) -> None:
        bar.update(n)
        lines.update(n)

    out_fmt = _output_format(Path(input_path).expanduser(), output_path, output_format)
    with bar, Table(input_path, input_format, on_bytes=read) as table:
        out_fmt = out_fmt or (table.format if table.format in OUTPUT_FORMATS else "jsonl")
        tcol = find_column(text_column, table.columns, table.path, "text")
        task = getattr(classifier, "task", tasks.SINGLE_LABEL)
        chunked = bool(getattr(getattr(classifier, "long_text", None), "chunked", False))
        extra = added_columns(labels, task) + ([WINDOWS_COLUMN] if chunked else [])
        thresholds = getattr(classifier, "thresholds", np.full(len(labels), 0.5))
        delimiter = None if out_fmt == "jsonl" else _label_delimiter(classifier)
        check_output(table, extra, output_path, "rename those columns in the input")
        rows = chunks = truncated_chunks = 0
        with atomic_path(output_path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out, \
                _scored_chunks(classifier, table, tcol, chunk_size, batch_size) as scored:
            write = _row_writer(out, out_fmt, table, extra,
                                lambda p: _added_values(task, labels, p, thresholds, delimiter))
            for chunk, probs, flags in scored:
                truncated_chunks += any(flags)
                for row, p, cut, n in zip(chunk, probs, flags, _windows(classifier, chunk, tcol, table, chunked)):
                    write(row, p, cut, n)
                rows += len(chunk)
                chunks += 1
                lines.update(0, len(chunk))
            out.flush()
    if truncated_chunks:
        warnings.warn(f"some texts were longer than the model's {getattr(classifier, 'max_length', '?')} "
                      f"tokens and were truncated (in {truncated_chunks} of {chunks} chunks)",
                      DataWarning, stacklevel=2)
    return BatchResult(rows, chunks, time.perf_counter() - t0, output_path)


def check_output(table: Table, extra: list[str], output_path: Path, hint: str) -> None:
    """Refuse an output whose added columns the input already has, or whose folder is missing."""
    clash = [c for c in extra if c in table.columns]
    if clash:
        raise GptclfError(f"{table.path} already has column(s) {clash} that the output adds", hint=hint)
    if not output_path.parent.is_dir():
        raise GptclfError(f"--output {output_path}: the folder {output_path.parent} does not exist")


def _output_format(input_path: Path, output_path: Path, output_format: str | None) -> str | None:
    """The output's format: ``output_format``, else its suffix's (None: unknown suffix, the
    input's). Refused: a file that is the input (renamed over it, the input would be lost) and
    a suffix naming a format this writer does not write (CSV inside ``x.parquet``)."""
    if output_path.resolve() == input_path.resolve() or (
            output_path.exists() and input_path.exists() and output_path.samefile(input_path)):
        raise GptclfError(f"--output {output_path} is the input file: it would be replaced",
                          hint="write the predictions to another file")
    suffix = output_path.suffix.lower()
    out_fmt = output_format or OUTPUT_SUFFIXES.get(suffix)
    if out_fmt is None and suffix in READABLE_SUFFIXES:
        raise GptclfError(f"--output {output_path}: predict writes {', '.join(OUTPUT_FORMATS)}, not {suffix[1:]}",
                          hint="name the output .csv, .tsv or .jsonl")
    if out_fmt is not None and out_fmt not in OUTPUT_FORMATS:
        raise GptclfError(f"unknown output format {out_fmt!r}", hint=f"use one of {', '.join(OUTPUT_FORMATS)}")
    return out_fmt


def _label_delimiter(classifier: Any) -> str:
    """What separates a label set in a CSV/TSV cell: the run's ``--label-delimiter``, so ``gptclf
    train`` reads the output back."""
    train = getattr(getattr(classifier, "run_config", None), "train", None) or {}
    sep = train.get("label_delimiter") if isinstance(train, dict) else None
    return sep if isinstance(sep, str) and sep else DEFAULT_LABEL_DELIMITER


def _row_writer(out: Any, out_fmt: str, table: Table, extra: list[str], values: Callable[[Any], list[Any]]
                ) -> Callable[[Row, Any, bool, int | None], None]:
    """A function that writes one input row with its prediction (the header is written now);
    ``values(p)``: the added columns' values for one row's probabilities."""
    writer = None
    if out_fmt != "jsonl":
        writer = csv.writer(out, delimiter="\t" if out_fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow([unicode_clean(c) for c in table.columns] + extra)

    def write(row: Row, p: Any, cut: bool, windows: int | None = None) -> None:
        added = values(p)
        if writer is None:
            added += [bool(cut)] + ([windows] if windows is not None else [])
            # Lone surrogates (from JSON escapes) cannot be UTF-8: U+FFFD, as the model saw.
            out.write(unicode_clean(json.dumps(row.record | dict(zip(extra, added)), ensure_ascii=False)) + "\n")
            return
        unknown = set(row.record) - set(table.columns)
        if unknown:
            raise GptclfError(f"{table.path}:{row.line}: keys {sorted(unknown)} not in the "
                              f"first record's {table.columns}",
                              hint="write JSONL output, or give every record the same keys")
        added += ["true" if cut else "false"] + ([str(windows)] if windows is not None else [])
        writer.writerow([_output_cell(row.record.get(c)) for c in table.columns] + added)
    return write


@contextlib.contextmanager
def _scored_chunks(classifier: Any, table: Table, tcol: str, chunk_size: int, batch_size: int
                   ) -> Iterator[Iterator[tuple[list[Row], Any, list[bool]]]]:
    """``(rows, probabilities, truncated flags)`` per chunk, in order. A Classifier's chunks are
    read and tokenized ahead in a worker thread; any other classifier's one after another."""
    def texts_of(chunk: list[Row]) -> list[str]:
        return [_text(r, tcol, table) for r in chunk]

    chunks = iter_chunks(table, chunk_size)
    if not hasattr(classifier, "proba_from_ids"):
        yield (_score_plain(classifier, chunk, texts_of(chunk), batch_size, table.path) for chunk in chunks)
        return
    encoded = Prefetch(((chunk, _encode_chunk(classifier, texts_of(chunk))) for chunk in chunks), PREFETCH)
    # The worker's per-chunk truncation warnings: flags count them, one summary at the end.
    with warnings.catch_warnings(), encoded:
        warnings.filterwarnings("ignore", message=".*were truncated", category=DataWarning)
        yield ((chunk, _named(lambda: classifier.proba_from_ids(enc[0], batch_size), table.path, chunk), enc[1])
               for chunk, enc in ((c, _named(lambda: e, table.path, c)) for c, e in encoded))


def _windows(classifier: Any, chunk: list[Row], tcol: str, table: Table, chunked: bool) -> list[int | None]:
    """A chunked model's windows per row (tokenizing again is cheap next to the model's windows)."""
    return classifier.windows([_text(r, tcol, table) for r in chunk]) if chunked else [None] * len(chunk)


def _text(row: Row, tcol: str, table: Table) -> str:
    return cell_text(row.record.get(tcol), f"{table.path}:{row.line}", tcol)


def _encode_chunk(classifier: Any, texts: list[str]) -> Any:
    """The chunk's ids and truncation flags, or the TextError that names its bad texts."""
    try:
        return classifier.encode_with_flags(texts)
    except TextError as e:
        return e


def _score_plain(classifier: Any, chunk: list[Row], texts: list[str], batch_size: int, path: Any
                 ) -> tuple[list[Row], Any, list[bool]]:
    with warnings.catch_warnings():  # flags say which texts were cut; one summary at the end
        warnings.filterwarnings("ignore", message=".*were truncated", category=DataWarning)
        probs = _named(lambda: classifier.predict_proba(texts, batch_size), path, chunk)
    flags = classifier.truncated(texts) if hasattr(classifier, "truncated") else [False] * len(texts)
    return chunk, probs, flags


def _named(compute: Callable[[], Any], path: Any, chunk: list[Row]) -> Any:
    """``compute()``; a TextError (raised or returned) names the rows of the file, not indices into a chunk."""
    try:
        result = compute()
    except TextError as e:
        result = e
    if isinstance(result, TextError):
        rows = "; ".join(f"{path}:{chunk[i].line}: {r}" for i, r in list(result.reasons.items())[:5])
        raise GptclfError(f"{len(result.reasons)} row(s) could not be classified: {rows}", hint=result.hint) from None
    return result


class Prefetch:
    """Items of ``source`` produced by a worker thread, at most ``depth`` ahead, in order; an
    exception in the worker is raised here when its turn comes. Use it as a context manager:
    leaving stops the worker (a Ctrl-C or an error does not leave it running)."""

    _DONE = object()

    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self.source, self.queue = source, queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="gptclf-prefetch", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self.source:
                if not self._put((True, item)):
                    return
            self._put((True, self._DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((False, e))

    def __enter__(self) -> "Prefetch":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def __iter__(self) -> Iterator[Any]:
        while True:
            ok, item = self.queue.get()
            if not ok:
                raise item
            if item is self._DONE:
                return
            yield item


def _output_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return unicode_clean(json.dumps(v, ensure_ascii=False))
    return unicode_clean(v) if isinstance(v, str) else v
