"""The chapter's data steps: balance the classes, split 70/10/20, check what a user needs.

:func:`create_balanced_dataset` and :func:`random_split` are the book's functions (and
reproduce its pandas code exactly); :func:`load_splits` reads the data (the SMS Spam
Collection or the user's files) and applies them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GptclfError, warn
from .sms_spam import is_sms_spam, load_sms_spam
from .tables import Example, read_table


def drop_empty_texts(examples: list[Example], where: str) -> list[Example]:
    kept = [e for e in examples if e.text.strip()]
    if len(kept) != len(examples):
        bad = [e.line for e in examples if not e.text.strip()]
        warn(f"{where}: skipped {len(bad)} empty text(s) (lines {bad[:10]}{' ...' if len(bad) > 10 else ''})")
    return kept


def create_balanced_dataset(examples: list[Example], seed: int = 123) -> list[Example]:
    """Undersample every class to the size of the smallest (the book's ham -> 747).

    Matches the book's pandas code exactly: ``df[df.Label == c].sample(n, random_state=seed)``
    for each larger class (in order of first appearance), then the smallest class whole.
    """
    by_class: dict[str, list[Example]] = {}
    for e in examples:
        by_class.setdefault(e.label, []).append(e)  # type: ignore[arg-type]
    n = min(len(v) for v in by_class.values())
    sampled, whole = [], []
    for items in by_class.values():
        if len(items) > n:
            # pandas' sample() draws RandomState(seed).choice(len, n, replace=False).
            idx = np.random.RandomState(seed).choice(len(items), size=n, replace=False)
            sampled += [items[i] for i in idx]
        else:
            whole += items
    return sampled + whole


def random_split(examples: list[Example], train_frac: float = 0.7, val_frac: float = 0.1,
                 seed: int = 123) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle (pandas ``sample(frac=1, random_state=seed)``) and cut 70/10/20 as the book does."""
    perm = np.random.RandomState(seed).choice(len(examples), size=len(examples), replace=False)
    shuffled = [examples[i] for i in perm]
    train_end = int(len(shuffled) * train_frac)
    val_end = train_end + int(len(shuffled) * val_frac)
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


@dataclass
class DataSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    source: str

    def summary(self) -> dict:
        return {
            "source": self.source,
            "labels": self.labels,
            "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
            "train_counts": dict(Counter(e.label for e in self.train)),
            "val_counts": dict(Counter(e.label for e in self.val)),
            "test_counts": dict(Counter(e.label for e in self.test)),
        }


def load_splits(data: str = "sms-spam", *, val: str | None = None, test: str | None = None,
                text_column: str = "text", label_column: str = "label", balance: str = "undersample",
                seed: int = 123, train_frac: float = 0.7, val_frac: float = 0.1) -> DataSplits:
    """Read the data, balance it and split it, with the checks a user needs."""
    if balance not in ("undersample", "none", "weight"):
        raise GptclfError(f"--balance must be undersample, none or weight, not {balance!r}")
    if is_sms_spam(data):
        examples, source = load_sms_spam(data)
    else:
        examples, source = read_table(data, text_column, label_column), str(Path(data).expanduser())
    examples = drop_empty_texts(examples, source)
    if not examples:
        raise GptclfError(f"{source}: no non-empty texts", hint=f"check --text-column ({text_column!r})")
    classes = Counter(e.label for e in examples)
    if len(classes) < 2:
        raise GptclfError(f"{source}: only one class ({next(iter(classes), None)!r}) in the labels",
                          hint="a classifier needs at least two classes; check --label-column")
    if balance == "undersample":
        examples = create_balanced_dataset(examples, seed)
    if val is None and test is None:
        tr, va, te = random_split(examples, train_frac, val_frac, seed)
    else:
        va = drop_empty_texts(read_table(val, text_column, label_column), val) if val else []
        te = drop_empty_texts(read_table(test, text_column, label_column), test) if test else []
        if val is None or test is None:
            # Only one given: split the rest of the training file for the other, seeded.
            frac = val_frac if val is None else 1 - train_frac - val_frac
            tr, other, _ = random_split(examples, 1 - frac, frac, seed)
            va, te = (other, te) if val is None else (va, other)
        else:
            tr = random_split(examples, 1.0, 0.0, seed)[0]
    for name, split, opt in (("validation", va, "--val"), ("test", te, "--test")):
        if not split:
            raise GptclfError(f"{source}: the {name} split is empty ({len(examples)} examples are too few "
                              "for the split)", hint=f"add data, or pass your own {name} file with {opt}")
    labels = sorted({e.label for e in tr})  # type: ignore[type-var]
    if len(labels) < 2:
        raise GptclfError(f"{source}: the training split has a single class {labels}",
                          hint="add data of the other classes or change the split")
    for name, split in (("validation", va), ("test", te)):
        unseen = sorted({e.label for e in split} - set(labels))  # type: ignore[type-var]
        if unseen:
            ex = next(e for e in split if e.label in unseen)
            raise GptclfError(f"{name} data has label(s) {unseen} never seen in training "
                              f"(first at line {ex.line})",
                              hint=f"training labels are {labels}; fix the label or add training examples")
    _warn_leakage(tr, va, te)
    return DataSplits(tr, va, te, labels, source)


def _warn_leakage(train: list[Example], val: list[Example], test: list[Example]) -> None:
    seen = {e.text for e in train}
    for name, split in (("validation", val), ("test", test)):
        dup = sum(1 for e in split if e.text in seen)
        if dup:
            warn(f"{dup} of {len(split)} {name} texts also appear in the training split "
                 f"(leakage: {name} accuracy is optimistic)")


