"""Training data held in Python: lists of texts and labels, (text, label) pairs, dicts, or a
pandas DataFrame (anything with ``.columns`` and ``.to_dict("records")``).

It becomes the same :class:`~gptclf.data.tables.Example` s a file gives, with the same
cell rules (:func:`~gptclf.data.tables.cell_text`: numbers as written, ``None`` empty)
and the same column lookup, so ``gptclf.train(data=df)`` and ``gptclf train --data
file.csv`` read a table the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import GptclfError
from .tables import Example, LabelReader, cell_text, find_column

WHERE = "in-memory data"


def from_texts(texts: Sequence[Any], labels: Sequence[Any], read_labels: LabelReader | None = None) -> list[Example]:
    """``texts[i]`` labelled ``labels[i]``, each label read by ``read_labels`` (default: one label)."""
    if isinstance(texts, str) or isinstance(labels, str):
        raise GptclfError("texts= and labels= take lists (one entry per example), not a single string")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise GptclfError(f"texts= has {len(texts)} entries but labels= has {len(labels)}",
                          hint="give one label per text")
    wheres = [f"{WHERE}, row {i}" for i in range(1, len(texts) + 1)]
    out_texts = [cell_text(None if _missing(t) else t, w, "text") for t, w in zip(texts, wheres)]
    if read_labels is None:
        read_labels, labels = _one_label, [None if _missing(v) else v for v in labels]
    read = read_labels(labels, wheres, "label")
    return [Example.of(t, lab, i) for i, (t, lab) in enumerate(zip(out_texts, read), 1)]


def from_object(data: Any, text_column: str = "text", label_column: str = "label",
                read_labels: LabelReader | None = None) -> list[Example]:
    """A DataFrame, a dict of columns, or a list of (text, label) pairs or of dicts."""
    def pairs(texts: Any, labels: Any) -> list[Example]:
        return from_texts(texts, labels, read_labels)

    if hasattr(data, "columns") and hasattr(data, "to_dict"):  # a pandas DataFrame
        columns = [str(c) for c in data.columns]
        tcol = find_column(text_column, columns, WHERE, "text")
        lcol = find_column(label_column, columns, WHERE, "label")
        return pairs(list(data[tcol]), list(data[lcol]))
    if isinstance(data, dict):
        columns = [str(c) for c in data]
        tcol = find_column(text_column, columns, WHERE, "text")
        lcol = find_column(label_column, columns, WHERE, "label")
        return pairs(data[tcol], data[lcol])
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(r, dict) for r in data):
            columns = sorted({str(k) for r in data for k in r})
            tcol = find_column(text_column, columns, WHERE, "text")
            lcol = find_column(label_column, columns, WHERE, "label")
            return pairs([r.get(tcol) for r in data], [r.get(lcol) for r in data])
        if all(isinstance(r, (list, tuple)) and len(r) == 2 for r in data):
            return pairs([r[0] for r in data], [r[1] for r in data])
        raise GptclfError("data= as a list takes (text, label) pairs or dicts with the text and label columns")
    raise GptclfError(f"data= cannot be a {type(data).__name__}",
                      hint="pass a file path, a pandas DataFrame, a dict of columns, a list of (text, label) "
                           "pairs, or texts= and labels=")


def _one_label(cells: list[Any], wheres: list[str], column: str) -> list[str]:
    """:func:`~gptclf.data.tables.one_label`, with the messages of the Python API."""
    out = []
    for value, where in zip(cells, wheres):
        if isinstance(value, (list, tuple)):
            raise GptclfError(f"{where}: the label is a list", hint="pass multi_label=True to train one yes/no "
                              "output per label")
        lab = cell_text(value, where, column).strip()
        if not lab:
            raise GptclfError(f"{where}: empty label", hint="every example needs a label")
        out.append(lab)
    return out


def _missing(v: Any) -> bool:
    """None, or pandas' NaN for an empty cell."""
    return v is None or (isinstance(v, float) and v != v)
