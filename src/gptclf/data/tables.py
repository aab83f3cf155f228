"""The one reader of the user's tables: CSV, TSV, JSONL and JSON files of texts (and labels),
and (with pyarrow) Parquet, Arrow/Feather files and folders saved by Hugging Face
``datasets`` (``save_to_disk``; ClassLabel columns read as their names).

Training (:func:`read_table`), evaluation and batch prediction
(:mod:`gptclf.inference.batch_files`) all read through :class:`Table`, so a file that one
command accepts, every command accepts, and every command reads it the same way:

* the format comes from the suffix (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``,
  ``.json``); any other suffix (``.txt``, none) is sniffed from the first line;
* text is decoded line by line (:mod:`gptclf.data.text`): UTF-8, else cp1252 with a warning;
* a column named twice (a CSV header or a JSON object's keys) is refused, never guessed;
* a CSV/TSV file may have no header row (the SMS collection's own ``label<TAB>text``): two
  columns whose first row is data (:func:`looks_like_data`), or ``header=False``
  (``--no-header``); :func:`read_table` then tells the label column by its few distinct
  values and says so. A headerless TSV is read without quote characters, as that format has none;
* rows stream from disk (JSON lists excepted), so a file of any size reads in bounded memory;
* JSON numbers are cells as they are written (``1``, not ``1.0``); objects and lists are not text;
* a label cell is read by a :data:`LabelReader`: one label per row (:func:`one_label`, the
  default), or a set of labels, a list or a delimited string (:func:`label_sets`); the task
  (:mod:`gptclf.tasks`) says which.
"""

from __future__ import annotations

import csv
import difflib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Tuple, Union

from ..errors import GptclfError, warn
from .text import decoded_lines

FORMATS = ("csv", "tsv", "jsonl", "json")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
ARROW_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow"}
# The separator of a label set in a string cell: "|" rather than ",", so that a CSV cell "sports|politics"
# needs no quotes, and label names rarely hold one.
DEFAULT_LABEL_DELIMITER = "|"
# Column names a header row is likely to hold: a first row with one of them (or a column the
# caller asked for) is a header, never data.
KNOWN_COLUMNS = frozenset({
    "text", "texts", "label", "labels", "message", "messages", "sms", "sentence", "review", "content", "body",
    "document", "comment", "tweet", "title", "question", "category", "class", "target", "topic", "sentiment",
    "y", "id", "tag", "tags", "intent"})


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None
    line: int = 0  # 1-based source line (record number for JSON), for error messages
    labels: tuple[str, ...] | None = None  # a label set (maybe empty), read by label_sets; label is None

    @classmethod
    def of(cls, text: str, label: "Label", line: int) -> "Example":
        """An example from what a :data:`LabelReader` read: one label (a string) or a set (a tuple)."""
        if isinstance(label, tuple):
            return cls(text, None, line, label)
        return cls(text, label, line)

    def label_set(self) -> tuple[str, ...]:
        """The labels of this example: its set (label_sets), else its one label."""
        if self.labels is not None:
            return self.labels
        return (self.label,) if self.label is not None else ()


# What a label cell reads as: one label, or a set of labels (a tuple, maybe empty).
Label = Union[str, Tuple[str, ...]]
# (cells, where each is, the column's name) -> one Label per cell, or a GptclfError naming the cell.
LabelReader = Callable[[list[Any], list[str], str], list[Any]]


@dataclass
class Row:
    line: int                 # 1-based physical line where the row starts
    record: dict[str, Any]    # column -> value (strings for CSV/TSV, JSON values for JSON)


# Files that are not text tables: refused by name rather than read as garbage.
NOT_TEXT = (".xlsx", ".xls", ".ods", ".zip", ".gz", ".bz2", ".xz", ".pkl", ".pickle", ".npy", ".npz")


def detect_format(path: Path, role: str = "input") -> str:
    """The format a file's suffix names, or ``"auto"`` (sniffed from its first line)."""
    suffix = path.suffix.lower()
    if suffix in NOT_TEXT:
        raise GptclfError(f"{path}: unknown {role} format {suffix!r}",
                          hint="save the table as .csv, .tsv, .jsonl or .json")
    return ARROW_SUFFIXES.get(suffix) or SUFFIXES.get(suffix, "auto")


def _sniff(first_line: str) -> str:
    first = first_line.lstrip()[:1]
    if first in ("{", "["):
        return "jsonl" if first == "{" else "json"
    # A tie goes to TSV: a tab in a CSV row is rare, a comma in a TSV's text is not (the SMS
    # collection's first line has one of each).
    tabs = first_line.count("\t")
    return "tsv" if tabs and tabs >= first_line.count(",") else "csv"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a key given twice would silently keep only the last value."""
    out = dict(pairs)
    if len(out) != len(pairs):
        dup = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"the object names key(s) {dup} more than once")
    return out


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise GptclfError(f"{where}: invalid JSON: {e.msg}",
                          hint="JSONL needs one JSON object per line") from None
    except (ValueError, RecursionError) as e:  # 5,000-digit numbers, [[[[... nested too deep, dup keys
        raise GptclfError(f"{where}: invalid JSON: {type(e).__name__}: {str(e)[:100]}") from None


class Table:
    """Rows of a CSV / TSV / JSONL / JSON file, read lazily from disk.

    ``columns`` is known after construction (the header; for JSON the keys of the first
    record) and ``format`` is the format read; iterate the object for :class:`Row` s.
    ``on_bytes`` is told how many bytes were read (for a progress bar).

    ``header``: a CSV/TSV file's first row is its header (True), is data (False; the columns are
    then named ``column 1``, ``column 2``, ...), or is detected (None: data when
    :func:`looks_like_data`, ``expect`` being the column names the caller will look for).
    ``headerless`` says which it was.
    """

    def __init__(self, path: str | Path, fmt: str | None = None,
                 on_bytes: Callable[[int], None] | None = None, header: bool | None = True,
                 expect: tuple[str, ...] = ()) -> None:
        self.path = Path(path).expanduser()
        self.header, self.expect, self.headerless = header, expect, False
        if not self.path.exists():
            raise GptclfError(f"{self.path}: no such file")
        self._file: IO[bytes] | None = None
        self._first: Row | None = None
        if self.path.is_dir():
            self._open_arrow(*hf_dataset_files(self.path))
            return
        if fmt is not None and fmt not in FORMATS:
            raise GptclfError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
        if (fmt or detect_format(self.path)) in ("parquet", "arrow"):
            self._open_arrow([self.path], {})
            return
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise GptclfError(f"{self.path}: cannot read the file ({e.strerror})") from None
        try:
            self._open(fmt or detect_format(self.path), on_bytes)
        except BaseException:
            self.close()
            raise

    def _open_arrow(self, files: list[Path], class_names: dict[str, list[str]]) -> None:
        """Parquet / Arrow / a ``datasets`` folder: record batches streamed from disk."""
        self.format = "parquet" if files and files[0].suffix.lower() in (".parquet", ".pq") else "arrow"
        batches = arrow_batches(files)
        schema = next(batches)
        self.columns = list(schema.names)
        self._records = self._arrow_rows(batches, class_names)

    def _arrow_rows(self, batches: Iterator[Any], class_names: dict[str, list[str]]) -> Iterator[Row]:
        n = 0
        for batch in batches:
            for rec in batch.to_pylist():
                n += 1
                for col, names in class_names.items():  # ClassLabel ints -> their names
                    v = rec.get(col)
                    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
                        rec[col] = names[v]
                yield Row(n, rec)

    def _open(self, fmt: str, on_bytes: Callable[[int], None] | None) -> None:
        lines = decoded_lines(self._file, self.path, on_bytes)
        head: list[str] = []  # up to the first line with something on it: what the format is sniffed from
        for line in lines:
            head.append(line)
            if line.strip():
                break
        if not head or not head[-1].strip():
            raise GptclfError(f"{self.path} is empty", hint="the file needs a header row and at least one row of data")
        self.format = _sniff(head[-1]) if fmt == "auto" else fmt
        if self.header is not True and self.format not in ("csv", "tsv"):
            if self.header is False:
                raise GptclfError(f"{self.path}: --no-header is for CSV and TSV files; this one is {self.format}")
            self.header = True  # JSON records name their keys
        self._first_line = head[-1]
        self._lines = _chain(head, lines)
        if self.format == "json":
            self._records = self._json_rows()
        elif self.format == "jsonl":
            self._records = self._jsonl_rows()
        else:
            self._records = self._delimited_rows()
        self._first = next(self._records, None) if self.format in ("json", "jsonl") else None
        if self.format in ("json", "jsonl"):
            if self._first is None:
                raise GptclfError(f"{self.path} has no rows")
            self.columns = list(self._first.record)

    # ------------------------------------------------------------------ formats

    def _delimited_rows(self) -> Iterator[Row]:
        delimiter = "\t" if self.format == "tsv" else ","
        kind = "TSV" if self.format == "tsv" else "CSV"
        # csv's default 128 KiB field limit would reject a long (legitimate) text; the
        # tokenizer truncates long texts later, with a warning that counts them.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        if self.header is not True:
            quoting = csv.QUOTE_NONE if self.format == "tsv" else csv.QUOTE_MINIMAL
            first = next(csv.reader([self._first_line], delimiter=delimiter, quoting=quoting), [])
            if self.header is False or looks_like_data(first, self.expect):
                self.headerless = True
                self.columns = [f"column {i}" for i in range(1, len(first) + 1)]
                return self._delimited_records(csv.reader(self._lines, delimiter=delimiter, quoting=quoting), kind)
        reader = csv.reader(self._lines, delimiter=delimiter)
        try:
            header = next(reader)
        except csv.Error as e:
            raise GptclfError(f"{self.path}:1: malformed header: {e}") from None
        self.columns = [h.strip() for h in header]
        dups = sorted(h for h, n in Counter(self.columns).items() if n > 1)  # linear, for wide files
        if dups:
            raise GptclfError(f"{self.path}:1: the header names column(s) {dups[:10]} more than once",
                              hint="give every column a distinct name")
        return self._delimited_records(reader, kind)

    def _delimited_records(self, reader: Any, kind: str) -> Iterator[Row]:
        n = len(self.columns)
        start = reader.line_num + 1  # a record's first physical line (quoted newlines span several)
        try:
            for row in reader:
                where = f"{self.path}:{start}" + (f"-{reader.line_num}" if reader.line_num > start else "")
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip() and n > 1):
                    continue  # a blank line; a row of empty fields is kept and checked like any other
                if len(row) != n:
                    raise GptclfError(
                        f"{where}: {len(row)} fields, the {'first row' if self.headerless else 'header'} has {n}",
                        hint="quote fields that contain the delimiter "
                             f"({'tab' if kind == 'TSV' else 'comma'}) or a newline, and close every quote")
                yield Row(line, dict(zip(self.columns, row)))
        except csv.Error as e:
            raise GptclfError(f"{self.path}:{start}: malformed {kind}: {e}") from None

    def _jsonl_rows(self) -> Iterator[Row]:
        for i, line in enumerate(self._lines, 1):
            if not line.strip():
                continue
            rec = parse_json(line, f"{self.path}:{i}")
            if not isinstance(rec, dict):
                raise GptclfError(f"{self.path}:{i}: expected a JSON object, got {type(rec).__name__}")
            yield Row(i, rec)

    def _json_rows(self) -> Iterator[Row]:
        data = parse_json("".join(self._lines), str(self.path))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise GptclfError(f"{self.path}: expected a JSON list of objects")
        for i, rec in enumerate(data, 1):
            yield Row(i, rec)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Row]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._records

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "Table":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise GptclfError("reading Parquet, Arrow or a datasets folder needs pyarrow",
                          hint="pip install 'gptclf[arrow]' (or pyarrow)") from None
    return pyarrow


def hf_dataset_files(folder: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """The Arrow files of a folder written by ``datasets``' ``save_to_disk`` and the label
    names of its ClassLabel columns; any other folder is refused with what to pass instead."""
    state = folder / "state.json"
    if not state.is_file():
        if (folder / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
            raise GptclfError(f"{folder} holds several splits {splits}",
                              hint=f"pass one of them, e.g. {folder / (splits[0] if splits else 'train')}")
        raise GptclfError(f"{folder} is a directory",
                          hint="pass a CSV, TSV, JSONL, JSON, Parquet or Arrow file, or a folder saved by "
                               "datasets' save_to_disk")
    meta = parse_json(state.read_text(encoding="utf-8"), str(state))
    if not isinstance(meta, dict):  # datasets writes an object; a list or a number is not its state.json
        raise GptclfError(f"{state} is not a datasets state.json (a JSON {type(meta).__name__}, not an object)")
    names = [d.get("filename") for d in (meta.get("_data_files") or []) if isinstance(d, dict)]
    files = [folder / n for n in names if isinstance(n, str) and "/" not in n and "\\" not in n]
    if not files:
        raise GptclfError(f"{state} lists no data files")
    classes: dict[str, list[str]] = {}
    info = folder / "dataset_info.json"
    if info.is_file():
        info_json = parse_json(info.read_text(encoding="utf-8"), str(info))
        features = (info_json.get("features") if isinstance(info_json, dict) else None) or {}
        for col, feat in features.items() if isinstance(features, dict) else ():
            if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and isinstance(feat.get("names"), list):
                classes[col] = [str(x) for x in feat["names"]]
    return files, classes


def arrow_batches(files: list[Path]) -> Iterator[Any]:
    """The first file's schema, then the record batches of every file in turn."""
    pa = _pyarrow()
    first = True
    for path in files:
        if not path.is_file():
            raise GptclfError(f"{path}: no such file")
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                pf = pa.parquet.ParquetFile(path)
                schema, batches = pf.schema_arrow, pf.iter_batches(batch_size=1024)
            else:
                try:
                    reader = pa.ipc.open_file(path)  # Feather v2 / Arrow IPC file
                    schema = reader.schema
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                except pa.ArrowInvalid:
                    reader = pa.ipc.open_stream(path)  # what datasets writes
                    schema, batches = reader.schema, iter(reader)
        except (pa.ArrowException, OSError) as e:
            raise GptclfError(f"{path}: cannot read it as {path.suffix.lstrip('.') or 'Arrow'}: {str(e)[:200]}") from None
        if first:
            yield schema
            first = False
        yield from checked_batches(batches, path, pa)


def checked_batches(batches: Iterator[Any], path: Path, pa: Any) -> Iterator[Any]:
    """Each record batch validated in full before anything reads it: garbled bytes mid-file
    (offsets past the buffer, bad UTF-8) otherwise crash pyarrow's to_pylist (a SystemError,
    a UnicodeDecodeError, even a segmentation fault) instead of being one line."""
    n = 0
    while True:
        try:
            batch = next(batches)
            batch.validate(full=True)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError, SystemError) as e:
            raise GptclfError(f"{path}: record batch {n + 1} is damaged ({type(e).__name__}: {str(e)[:150]})",
                              hint="the file is truncated or corrupted: write it again") from None
        n += 1
        yield batch


def looks_like_data(cells: list[str], expect: tuple[str, ...] = ()) -> bool:
    """Whether a first row of two cells is data rather than a header: neither cell is a column
    name (:data:`KNOWN_COLUMNS` or one in ``expect``) and one reads as text (it has a space),
    as ``ham<TAB>Go until jurong point, crazy..`` does and ``message,category`` does not."""
    names = KNOWN_COLUMNS | {e.lower() for e in expect if e}
    cells = [c.strip() for c in cells]
    return len(cells) == 2 and not any(c.lower() in names for c in cells) and any(" " in c for c in cells)


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def cell_text(v: object, where: str, column: str) -> str:
    """A cell as text: JSON numbers the way they are written (1, not 1.0), objects refused."""
    if v is None:
        return ""
    if isinstance(v, bool):  # before int: True is an int
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # 1.0 and 1 are the same label
    if isinstance(v, (str, int, float)):
        return str(v)
    raise GptclfError(f"{where}: column {column!r} holds a JSON {type(v).__name__}, "
                      "expected a string or a number")


def find_column(name: str, columns: list[str], path: Path | str, role: str, delimited: bool = False) -> str:
    """``name`` among ``columns`` (exact, else the one case-insensitive match), or a clear error
    (``delimited``: a CSV/TSV file, whose first row might be data: the error names --no-header)."""
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"pass --{role}-column NAME"
    if close:
        hint = f"did you mean --{role}-column {close[0]!r}? " + hint
    if delimited:
        hint += "; if the file has no header row (label,text or text,label), pass --no-header"
    raise GptclfError(f"{path}: no {role} column {name!r}; the columns are {columns[:50]}", hint=hint)


def read_table(path: Path | str, text_column: str = "text", label_column: str | None = "label",
               fmt: str | None = None, read_labels: LabelReader | None = None,
               header: bool | None = None) -> list[Example]:
    """Every row of a file of labelled (or, with ``label_column=None``, plain) texts, each label
    cell read by ``read_labels`` (default :func:`one_label`). ``header`` as :class:`Table`'s
    (None: detected); a headerless file's columns are told apart by :func:`headerless_columns`."""
    expect = (text_column, label_column or "")
    with Table(path, fmt, header=header, expect=expect) as table:
        rows = list(table)
        if not rows:
            raise GptclfError(f"{table.path} has a header but no rows")
        columns = table.columns
        if table.format in ("json", "jsonl"):  # records may differ in their keys
            columns = sorted({k for r in rows for k in r.record})
        if table.headerless:
            tcol, lcol = headerless_columns(table, rows, text_column, label_column, detected=header is None)
        else:
            delimited = table.format in ("csv", "tsv")
            tcol = find_column(text_column, columns, table.path, "text", delimited)
            lcol = find_column(label_column, columns, table.path, "label", delimited) if label_column else None
        wheres = [f"{table.path}:{r.line}" for r in rows]
        texts = [cell_text(r.record.get(tcol), w, tcol) for r, w in zip(rows, wheres)]
        if lcol is None:
            return [Example(t, None, r.line) for t, r in zip(texts, rows)]
        labels = (read_labels or one_label)([r.record.get(lcol) for r in rows], wheres, lcol)
        return [Example.of(t, lab, r.line) for t, lab, r in zip(texts, labels, rows)]


def headerless_columns(table: Table, rows: list[Row], text_column: str, label_column: str | None,
                       detected: bool) -> tuple[str, str | None]:
    """The text and label columns of a headerless two-column table: the label column is the one
    with fewer distinct values (then the shorter cells; a tie reads the SMS collection's order,
    label first). A detected header (``detected``) must pass one more check: the first row's
    label recurs further down, as a class does, where a header's name would not."""
    if len(table.columns) != 2:
        raise GptclfError(f"{table.path}: --no-header reads two columns (label and text, either order); the "
                          f"first row has {len(table.columns)}", hint="add a header row naming the columns")
    a, b = ([str(r.record[c]) for r in rows] for c in table.columns)
    first_is_label = (len(set(a)), sum(map(len, a))) <= (len(set(b)), sum(map(len, b)))
    lcol, tcol = table.columns if first_is_label else table.columns[::-1]
    labels = a if first_is_label else b
    if detected and labels.count(labels[0]) < 2:
        find_column(text_column, [rows[0].record[c] for c in table.columns], table.path, "text", True)
    order = "label,text" if first_is_label else "text,label"
    warn(f"{table.path}: no header row (the first row is data); read as {order}: {len(set(labels))} distinct "
         f"labels in {lcol}" + ("" if detected else " (--no-header)"))
    return tcol, (lcol if label_column else None)


def one_label(cells: list[Any], wheres: list[str], column: str) -> list[str]:
    """The single-label rule: every cell one non-empty label (a string or a number as written)."""
    out = []
    for value, where in zip(cells, wheres):
        if isinstance(value, (list, tuple)):
            raise GptclfError(f"{where}: column {column!r} holds a JSON list (a set of labels?)",
                              hint="pass --multi-label to train one yes/no output per label")
        label = cell_text(value, where, column).strip()
        if not label:
            raise GptclfError(f"{where}: empty label in column {column!r}",
                              hint="every row needs a label; remove the row or fill it in")
        out.append(label)
    return out


def label_sets(delimiter: str = DEFAULT_LABEL_DELIMITER) -> LabelReader:
    """The rule for label sets: every cell a list or a ``delimiter``-separated string (:func:`label_list`),
    all cells written the same way (:func:`check_label_kinds`)."""
    def read(cells: list[Any], wheres: list[str], column: str) -> list[tuple[str, ...]]:
        out = [label_list(v, w, column, delimiter) for v, w in zip(cells, wheres)]
        check_label_kinds(cells, wheres, column)
        return out

    return read


# ------------------------------------------------------------------ label-set cells


def label_list(v: Any, where: str, column: str, delimiter: str = DEFAULT_LABEL_DELIMITER) -> tuple[str, ...]:
    """A label-set cell as its set, in first-seen order, duplicates dropped.

    A JSON/Parquet list (``["a", "b"]``), a string holding one (``'["a", "b"]'``, or the
    ``['a', 'b']`` pandas writes for a list column), or a string split on ``delimiter``
    (``"a|b"``). An empty cell, ``[]`` or ``""`` is the empty set: a row with no label.
    """
    if v is None or (isinstance(v, float) and v != v):  # None, or pandas' NaN for an empty cell
        return ()
    if isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]"):
        v = _parse_list_cell(v.strip(), where, column)
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) >= 1:  # a numpy array: pandas' cell of a Parquet list
        v = v.tolist()
    elif hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # a numpy scalar: one label
        v = v.item()
    if isinstance(v, (list, tuple)):
        items = list(v)
        if any(isinstance(x, (list, tuple, dict)) for x in items):
            raise GptclfError(f"{where}: column {column!r} holds a nested list or object",
                              hint="each label of a row's list must be a string or a number")
        names = [cell_text(x, where, column).strip() for x in items]
        joined = next((n for n in names if delimiter and delimiter in n), None)
        if joined is not None:
            # The predictions' CSV joins a row's labels with the delimiter: 'food|drink' would
            # read back as two labels.
            raise GptclfError(f"{where}: column {column!r} has the label {joined[:60]!r}, which contains the "
                              f"label delimiter {delimiter!r}",
                              hint="rename the label, or pass another --label-delimiter (one no label contains)")
    else:
        if not delimiter:
            raise GptclfError("--label-delimiter must not be empty")
        names = [x.strip() for x in cell_text(v, where, column).split(delimiter)]
    return tuple(dict.fromkeys(n for n in names if n))


def _parse_list_cell(text: str, where: str, column: str) -> list[Any]:
    import ast

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        try:
            value = ast.literal_eval(text)  # literals only: never runs code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise GptclfError(f"{where}: column {column!r} holds {text[:60]!r}, which looks like a list but "
                              "is not valid JSON", hint='write the labels as ["a", "b"] or as a|b') from None
    if not isinstance(value, (list, tuple)):
        raise GptclfError(f"{where}: column {column!r} holds {text[:60]!r}, not a list of labels")
    return list(value)


def check_label_kinds(values: list[Any], wheres: list[str], column: str) -> None:
    """Refuse a label column that mixes JSON lists with plain strings: one of the two is a mistake
    (a string "a,b" next to lists would silently be one label named "a,b")."""
    first_list = next((i for i, v in enumerate(values) if isinstance(v, (list, tuple))), None)
    first_str = next((i for i, v in enumerate(values) if isinstance(v, str) and v.strip()
                      and not v.strip().startswith("[")), None)
    if first_list is not None and first_str is not None:
        raise GptclfError(f"column {column!r} mixes lists of labels ({wheres[first_list]}) with strings "
                          f"({wheres[first_str]}: {str(values[first_str])[:60]!r})",
                          hint="write every row's labels the same way: a list, or one delimited string")
