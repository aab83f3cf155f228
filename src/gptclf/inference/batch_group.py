"""Several models over one file: ``gptclf predict --model a=RUN1 --model b=RUN2 --input FILE --output OUT``.

One pass over the file, chunk by chunk as :func:`gptclf.inference.batch_files.predict_file`
reads it, each chunk through one :class:`gptclf.inference.group.ModelGroup` (runs of one base
share it and run the blocks they all froze once). Every input row gives one output row, its
columns kept, then each model's columns as ``predict_file`` writes them for that model alone,
prefixed by the model's name: ``spam_predicted_label``, ``spam_predicted_score``, ``spam_p_ham``,
..., ``spam_truncated`` (``spam_windows`` for a chunked model), then ``topic_...``. The output is
written atomically, as ``predict_file`` writes it.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import tasks
from ..data.encoding import unicode_clean
from ..data.tables import Row, Table, find_column
from ..errors import DataWarning, GptclfError
from ..files import atomic_path
from .batch_files import (OUTPUT_FORMATS, WINDOWS_COLUMN, BatchResult, _added_values,
                          _label_delimiter, _named, _output_cell, _output_format, _text, added_columns,
                          check_output, iter_chunks)
from .group import ModelGroup


def group_columns(group: ModelGroup) -> list[str]:
    """Every model's added columns, prefixed by its name, in the order of the models."""
    out = []
    for name, clf in group.models.items():
        cols = added_columns(list(clf.labels), getattr(clf, "task", tasks.SINGLE_LABEL)) + \
            ([WINDOWS_COLUMN] if _chunked(clf) else [])
        out += [f"{name}_{c}" for c in cols]
    return out


def _chunked(clf: Any) -> bool:
    return bool(getattr(getattr(clf, "long_text", None), "chunked", False))


def _model_cells(clf: Any, probs: np.ndarray, texts: list[str], delimiter: str | None) -> list[list[Any]]:
    """One model's added cells for each text of a chunk (``delimiter`` None: JSONL's values)."""
    labels, task = list(clf.labels), getattr(clf, "task", tasks.SINGLE_LABEL)
    thresholds = getattr(clf, "thresholds", np.full(len(labels), 0.5))
    sep = _label_delimiter(clf) if delimiter is not None else None
    cut = clf.truncated(texts) if hasattr(clf, "truncated") else [False] * len(texts)
    windows = clf.windows(texts) if _chunked(clf) else None
    rows = []
    for i, p in enumerate(probs):
        cells = _added_values(task, labels, p, thresholds, sep)
        cells.append(bool(cut[i]) if sep is None else ("true" if cut[i] else "false"))
        if windows is not None:
            cells.append(int(windows[i]) if sep is None else str(windows[i]))
        rows.append(cells)
    return rows


def predict_file_group(group: ModelGroup, input_path: str | Path, output_path: str | Path, *,
                       text_column: str = "text", chunk_size: int = 1000, batch_size: int = 32,
                       input_format: str | None = None, output_format: str | None = None) -> BatchResult:
    """Classify every row of ``input_path`` by every model of ``group`` into ``output_path``."""
    t0 = time.perf_counter()
    output_path = Path(output_path).expanduser()
    out_fmt = _output_format(Path(input_path).expanduser(), output_path, output_format)
    with Table(input_path, input_format) as table:
        out_fmt = out_fmt or (table.format if table.format in OUTPUT_FORMATS else "jsonl")
        tcol = find_column(text_column, table.columns, table.path, "text")
        extra = group_columns(group)
        check_output(table, extra, output_path, "rename those columns in the input, or name the models otherwise")
        rows = chunks = 0
        with atomic_path(output_path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out, \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*were truncated", category=DataWarning)
            write = _writer(out, out_fmt, table, extra)
            delimiter = None if out_fmt == "jsonl" else ","  # any non-None: CSV/TSV cells
            for chunk in iter_chunks(table, chunk_size):
                texts = [_text(r, tcol, table) for r in chunk]
                probs = _named(lambda: group.predict_proba(texts, None, batch_size), table.path, chunk)
                cells = [_model_cells(group.models[n], probs[n], texts, delimiter) for n in group.names]
                for i, row in enumerate(chunk):
                    write(row, [c for model in cells for c in model[i]])
                rows, chunks = rows + len(chunk), chunks + 1
            out.flush()
    return BatchResult(rows, chunks, time.perf_counter() - t0, output_path)


def _writer(out: Any, out_fmt: str, table: Table, extra: list[str]) -> Callable[[Row, list[Any]], None]:
    """Writes one input row with its added cells (the header now, for CSV/TSV)."""
    writer = None
    if out_fmt != "jsonl":
        writer = csv.writer(out, delimiter="\t" if out_fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow([unicode_clean(c) for c in table.columns] + extra)

    def write(row: Row, added: list[Any]) -> None:
        if writer is None:
            out.write(unicode_clean(json.dumps(row.record | dict(zip(extra, added)), ensure_ascii=False)) + "\n")
            return
        unknown = set(row.record) - set(table.columns)
        if unknown:
            raise GptclfError(f"{table.path}:{row.line}: keys {sorted(unknown)} not in the first record's "
                              f"{table.columns}", hint="write JSONL output, or give every record the same keys")
        writer.writerow([_output_cell(row.record.get(c)) for c in table.columns] + added)
    return write

