"""The rows an audit looks at: every row of ``--data`` (and of ``--val`` / ``--test``), numbered by
its position in its file, with the split ``gptclf train`` would put it in, and the folds.

An audit numbers rows as the files hold them (empty texts too, so ``row`` is a position a person
can find), and fingerprints each file by its row count and a hash of its texts: that is what
``gptclf train --drop-label-issues`` checks before it drops anything (:mod:`gptclf.auditing.drop`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import tasks
from ..config import TrainConfig
from ..data.splits import load_splits, rarest_label_key, read_examples, sorted_labels
from ..data.tables import Example
from ..errors import DataWarning, GptclfError

FILES = ("data", "val", "test")  # the roles of the files an audit reads, in row order


def texts_sha256(examples: Sequence[Example]) -> str:
    """A hash of the texts in order: two files with the same texts in the same order agree."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.text.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def file_record(path: str, examples: Sequence[Example]) -> dict[str, Any]:
    """What audit.json records of one file: where it was, its row count and the hash of its texts."""
    return {"path": path, "rows": len(examples), "sha256": texts_sha256(examples)}


@dataclass
class AuditRows:
    """Every row of the files audited, in order (``--data``'s, then ``--val``'s, then ``--test``'s)."""

    examples: list[Example]
    file: list[str]       # "data", "val" or "test": the file each row is in
    row: list[int]        # 0-based position in that file
    split: list[str]      # where gptclf train with these options puts it: train, val, test or unused
    labels: list[str]     # every label of the non-empty rows, in natural order
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> file_record

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def empty(self) -> np.ndarray:
        return np.array([not e.text.strip() for e in self.examples], dtype=bool)


def read_rows(cfg: TrainConfig, examples: list[Example] | None = None) -> AuditRows:
    """Every row of ``cfg.data`` (or the in-memory ``examples``), ``cfg.val`` and ``cfg.test``; ``cfg``
    is resolved. Refuses data with fewer than two classes."""
    task = tasks.get(cfg.task)
    read_labels = task.label_reader(cfg.label_delimiter)
    parts: dict[str, list[Example]] = {}
    if examples is None:
        examples, source = read_examples(cfg.data, cfg.text_column, cfg.label_column, read_labels)
    else:
        source = cfg.data
    parts["data"] = list(examples)
    sources = {"data": file_record(source, parts["data"])}
    for role in ("val", "test"):
        path = getattr(cfg, role)
        if path:
            parts[role], where = read_examples(path, cfg.text_column, cfg.label_column, read_labels)
            sources[role] = file_record(where, parts[role])
    rows = [e for role in FILES for e in parts.get(role, [])]
    filled = [e for e in rows if e.text.strip()]
    if not filled:
        raise GptclfError(f"{source}: no non-empty texts", hint=f"check --text-column ({cfg.text_column!r})")
    task.check_examples(filled, source)
    labels = sorted_labels({lab for e in filled for lab in e.label_set()})
    if len(labels) < 2:
        raise GptclfError(f"{source}: only one class ({labels[0] if labels else None!r}) in the labels: there is "
                          "nothing to audit", hint="an audit needs at least two classes; check --label-column")
    split = _train_splits(cfg, parts, task)
    return AuditRows(rows, [role for role in FILES for _ in parts.get(role, [])],
                     [i for role in FILES for i in range(len(parts.get(role, [])))], split, labels, sources)


def _train_splits(cfg: TrainConfig, parts: dict[str, list[Example]], task: tasks.Task) -> list[str]:
    """Which split ``gptclf train`` with these options puts each row in ("unused": undersampled or
    empty): train/test leaks are judged against it. Computed by the training path itself."""
    where: dict[int, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the audit reports these itself
        try:
            splits = load_splits(cfg.data, examples=parts["data"], balance=cfg.balance, split=cfg.split,
                                 val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                                 label_column=cfg.label_column, seed=cfg.seed, task=task,
                                 read_labels=task.label_reader(cfg.label_delimiter))
        except GptclfError:
            splits = None  # data that cannot be split for training can still be audited
    if splits is not None:
        for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            where.update({id(e): name for e in part})
    out = [where.get(id(e), "unused") for e in parts["data"]]
    for role in ("val", "test"):  # a given file is that split (its empty rows aside)
        out += [role if e.text.strip() else "unused" for e in parts.get(role, [])]
    return out


def assign_folds(rows: AuditRows, keep: np.ndarray, folds: int, seed: int, batch_size: int) -> np.ndarray:
    """Each kept row's fold (0 .. folds-1; -1 for the rest), stratified by label (multi-label: by
    each row's rarest label) and seeded. Refuses a class too small to be in every fold."""
    from sklearn.model_selection import StratifiedKFold

    chosen = [rows.examples[i] for i in np.flatnonzero(keep)]
    counts = Counter(lab for e in chosen for lab in e.label_set())
    small = sorted((n, lab) for lab, n in counts.items() if n < folds)
    if small:
        n, lab = small[0]
        raise GptclfError(f"{rows.sources['data']['path']}: label {lab!r} has {n} row(s), fewer than --folds "
                          f"{folds}: every fold needs each label", hint=f"use --folds {max(2, n)} or add rows")
    if len(chosen) * (folds - 1) // folds < batch_size:
        raise GptclfError(f"{rows.sources['data']['path']}: {len(chosen)} rows are too few for {folds} folds: "
                          f"a fold's training part is smaller than one batch ({batch_size})",
                          hint="add rows, or lower --folds or --batch-size")
    key = rarest_label_key(chosen) if any(e.labels is not None for e in chosen) else (lambda e: e.label)
    strata = [key(e) for e in chosen]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a rare label set: fewer members than folds
        cut = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold = np.full(len(rows), -1, dtype=np.int64)
        index = np.flatnonzero(keep)
        for k, (_, held) in enumerate(cut.split(np.zeros(len(chosen)), strata)):
            fold[index[held]] = k
    return fold
