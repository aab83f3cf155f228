"""Batch prediction over a file: ``gptclf predict --input FILE --output FILE``.

The input (CSV, TSV or JSONL) is read as a stream, ``chunk_size`` rows at a time, so
memory stays bounded whatever the file size. Every input row gives exactly one output
row, in input order (an empty text still gets one), with every input column kept and
these columns added:

* ``predicted_label``  the most probable label
* ``predicted_score``  its probability
* ``p_<label>``        one probability column per class (in the model's label order)

The output is written to a temporary file in the output's folder and renamed over the
output only when every row is written: an error or Ctrl-C leaves no partial file behind.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from .data import DataWarning, _find_column
from .errors import GptclfError

LABEL_COLUMN = "predicted_label"
SCORE_COLUMN = "predicted_score"
PROB_PREFIX = "p_"
FORMATS = ("csv", "tsv", "jsonl")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_BOM = b"\xef\xbb\xbf"


def file_format(path: Path, given: str | None = None, role: str = "input") -> str:
    if given:
        if given not in FORMATS:
            raise GptclfError(f"unknown format {given!r}", hint=f"use one of {', '.join(FORMATS)}")
        return given
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise GptclfError(f"{path}: unknown {role} format {path.suffix or '(no suffix)'!r}",
                          hint=f"name the file .csv, .tsv or .jsonl, or pass --format {'|'.join(FORMATS)}")
    return fmt


def added_columns(labels: list[str]) -> list[str]:
    return [LABEL_COLUMN, SCORE_COLUMN] + [f"{PROB_PREFIX}{lab}" for lab in labels]


@dataclass
class Row:
    line: int          # 1-based line of the row's start (record number's line for JSONL)
    record: dict[str, Any]


class TableStream:
    """Rows of a CSV / TSV / JSONL file, read lazily from disk.

    ``columns`` is known after construction (the header; for JSONL the keys of the first
    record); iterate the object for the rows. ``on_bytes`` is told how many bytes each
    line had (for the progress bar).
    """

    def __init__(self, path: str | Path, fmt: str | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise GptclfError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise GptclfError(f"{self.path} is a directory", hint="pass a CSV, TSV or JSONL file")
        self.format = file_format(self.path, fmt)
        self._on_bytes = on_bytes
        self._warned_encoding = False
        try:
            self._file: IO[bytes] = open(self.path, "rb")
        except OSError as e:
            raise GptclfError(f"{self.path}: cannot read the file ({e.strerror})") from None
        self._lines = self._decoded_lines()
        self._first: Row | None = None
        try:
            self._open_table()
        except BaseException:
            self.close()
            raise

    def _open_table(self) -> None:
        """Read the header (CSV/TSV) or the first record (JSONL): the columns."""
        if self.format == "jsonl":
            self._records = self._jsonl_rows()
            self._first = next(self._records, None)
            if self._first is None:
                raise GptclfError(f"{self.path} has no records", hint="JSONL needs one JSON object per line")
            self.columns = list(self._first.record.keys())
        else:
            delim = "\t" if self.format == "tsv" else ","
            self._reader = csv.reader(self._lines, delimiter=delim)
            try:
                header = next(self._reader)
            except StopIteration:
                raise GptclfError(f"{self.path} is empty", hint="the file needs a header row") from None
            except csv.Error as e:
                raise GptclfError(f"{self.path}:1: malformed header: {e}") from None
            self.columns = [h.strip() for h in header]
            self._records = self._delimited_rows()

    def _decoded_lines(self) -> Iterator[str]:
        first = True
        for raw in self._file:
            if self._on_bytes:
                self._on_bytes(len(raw))
            if first:
                raw = raw.removeprefix(_BOM)
                first = False
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                if not self._warned_encoding:
                    warnings.warn(f"{self.path}: not valid UTF-8; reading those lines as cp1252",
                                  DataWarning, stacklevel=2)
                    self._warned_encoding = True
                yield raw.decode("cp1252", errors="replace")

    def _delimited_rows(self) -> Iterator[Row]:
        n = len(self.columns)
        kind = "TSV" if self.format == "tsv" else "CSV"
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise GptclfError(f"{self.path}:{self._reader.line_num}: malformed {kind}: {e}") from None
            if not row:
                continue  # a blank line is not a row
            if len(row) != n:
                raise GptclfError(f"{self.path}:{self._reader.line_num}: {len(row)} fields, the header has {n}",
                                  hint="quote fields that contain the delimiter or a newline")
            yield Row(self._reader.line_num, dict(zip(self.columns, row)))

    def _jsonl_rows(self) -> Iterator[Row]:
        for i, line in enumerate(self._lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise GptclfError(f"{self.path}:{i}: invalid JSON: {e.msg}",
                                  hint="JSONL needs one JSON object per line") from None
            if not isinstance(rec, dict):
                raise GptclfError(f"{self.path}:{i}: expected a JSON object, got {type(rec).__name__}")
            yield Row(i, rec)

    def __iter__(self) -> Iterator[Row]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._records

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TableStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


@dataclass
class BatchResult:
    rows: int
    chunks: int
    seconds: float
    output: Path


def predict_file(classifier: Any, input_path: str | Path, output_path: str | Path, *,
                 text_column: str = "text", chunk_size: int = 1000, batch_size: int = 32,
                 input_format: str | None = None, output_format: str | None = None,
                 progress: bool = False) -> BatchResult:
    """Classify every row of ``input_path`` and write ``output_path`` (see the module doc).

    ``classifier`` needs ``labels`` and ``predict_proba(texts, batch_size)`` (a
    :class:`gptclf.predict.Classifier`).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    output_path = Path(output_path).expanduser()
    labels = list(classifier.labels)
    size = Path(input_path).expanduser().stat().st_size if Path(input_path).expanduser().is_file() else None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="predict", disable=not progress, file=sys.stderr)
    with bar, TableStream(input_path, input_format, on_bytes=bar.update) as table:
        out_fmt = output_format or _SUFFIXES.get(output_path.suffix.lower()) or table.format
        out_fmt = file_format(output_path, out_fmt, "output")
        tcol = _find_column(text_column, table.columns, table.path, "text")
        extra = added_columns(labels)
        clash = [c for c in extra if c in table.columns]
        if clash:
            raise GptclfError(f"{table.path} already has column(s) {clash} that the output adds",
                              hint="rename those columns in the input")
        if not output_path.parent.is_dir():
            raise GptclfError(f"--output {output_path}: the folder {output_path.parent} does not exist")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.tmp-", dir=output_path.parent)
        tmp = Path(tmp_name)
        rows = chunks = truncated_chunks = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                writer = None
                if out_fmt != "jsonl":
                    writer = csv.writer(out, delimiter="\t" if out_fmt == "tsv" else ",", lineterminator="\n")
                    writer.writerow(table.columns + extra)
                for chunk in iter_chunks(table, chunk_size):
                    texts = [_text_of(r.record.get(tcol)) for r in chunk]
                    # One summary warning at the end instead of one per chunk.
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", DataWarning)
                        probs = classifier.predict_proba(texts, batch_size)
                    truncated_chunks += any(issubclass(w.category, DataWarning) for w in caught)
                    for row, p in zip(chunk, probs):
                        k = int(p.argmax())
                        added = [labels[k], round(float(p[k]), 6)] + [round(float(v), 6) for v in p]
                        if writer is None:
                            out.write(json.dumps(row.record | dict(zip(extra, added)), ensure_ascii=False) + "\n")
                        else:
                            unknown = set(row.record) - set(table.columns)
                            if unknown:
                                raise GptclfError(f"{table.path}:{row.line}: keys {sorted(unknown)} not in the "
                                                  f"first record's {table.columns}",
                                                  hint="write JSONL output, or give every record the same keys")
                            writer.writerow([_cell(row.record.get(c)) for c in table.columns] + added)
                    rows += len(chunk)
                    chunks += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, output_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if truncated_chunks:
        warnings.warn(f"some texts were longer than the model's {getattr(classifier, 'max_length', '?')} "
                      f"tokens and were truncated (in {truncated_chunks} of {chunks} chunks)",
                      DataWarning, stacklevel=2)
    return BatchResult(rows, chunks, time.perf_counter() - t0, output_path)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return v
