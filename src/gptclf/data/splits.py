"""The chapter's data steps: balance the classes, split 70/10/20, check what a user needs.

:func:`create_balanced_dataset` and :func:`random_split` are the book's functions (and
reproduce its pandas code exactly); :func:`load_splits` reads the data (the SMS Spam
Collection, the user's files or in-memory examples) and applies them.

Defaults (``balance=None``, ``split=None``): the chapter's SMS run keeps the book's
undersampling and its plain seeded shuffle, so its split is exactly the book's
(1045/149/300). Any other data keeps every row and gets a stratified seeded split
(:func:`stratified_split`), so a small class is not left out of validation or test.
Whenever rows are dropped or a split lacks a class, a :class:`DataWarning` says so with
the numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import GptclfError, warn
from .sms_spam import is_sms_spam, load_sms_spam
from .tables import Example, LabelReader, read_table

if TYPE_CHECKING:  # the data layer is handed a task; it never picks one
    from ..tasks import Task


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


def stratified_split(examples: list[Example], train_frac: float = 0.7, val_frac: float = 0.1,
                     seed: int = 123) -> tuple[list[Example], list[Example], list[Example]]:
    """70/10/20 within each class (seeded), so every split has every class it can have.

    A class of at least 3 examples gets at least one in validation and one in test; each
    split is then shuffled (seeded) so its classes are interleaved. Multi-label examples are
    grouped by their rarest label (:func:`rarest_label_key`).
    """
    rng = np.random.RandomState(seed)
    key = rarest_label_key(examples) if any(e.labels is not None for e in examples) else (lambda e: e.label)
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for label in sorted({key(e) for e in examples}, key=natural_key):
        items = [e for e in examples if key(e) == label]
        items = [items[i] for i in rng.permutation(len(items))]
        n = len(items)
        n_val = int(round(n * val_frac))
        n_test = int(round(n * (1 - train_frac - val_frac)))
        if n >= 3:  # at least one of each class where there are enough, never all of it
            n_val = max(n_val, 1) if val_frac > 0 else 0
            n_test = max(n_test, 1) if 1 - train_frac - val_frac > 1e-9 else 0
        n_train = n - n_val - n_test
        parts[0].extend(items[:n_train])
        parts[1].extend(items[n_train:n_train + n_val])
        parts[2].extend(items[n_train + n_val:n_train + n_val + n_test])
    out = tuple([p[i] for i in rng.permutation(len(p))] for p in parts)
    return out[0], out[1], out[2]


def rarest_label_key(examples: list[Example]):
    """Multi-label stratification, approximately: each example is stratified by the rarest of
    its labels ("" for none), so every label of three or more examples reaches validation and
    test through the examples where it is the rarest. Label sets cannot be stratified exactly
    (there are too many); :func:`load_splits` warns about any label a split still lacks."""
    counts = Counter(lab for e in examples for lab in e.label_set())

    def key(e: Example) -> str:
        return min(e.label_set(), key=lambda lab: (counts[lab], natural_key(lab)), default="")

    return key


def natural_key(label: str) -> tuple:
    """Sort labels as a person would: ``'2'`` before ``'10'``, numbers by value, text by case-folded text."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", label)
    key: list[tuple[int, object]] = []
    for part in parts:
        if not part:
            continue
        try:
            key.append((0, float(part)))
        except ValueError:
            key.append((1, part.casefold()))
    return (tuple(key), label)


def sorted_labels(labels: Sequence[str] | set[str]) -> list[str]:
    return sorted(labels, key=natural_key)


def class_counts(examples: Sequence[Example], labels: Sequence[str] | None = None) -> dict[str, int]:
    """``{label: n}`` in label order (``labels``, else the natural order of those present)."""
    counts = Counter(lab for e in examples for lab in e.label_set())
    order = list(labels) if labels is not None else sorted_labels(set(counts))  # type: ignore[arg-type]
    return {lab: counts.get(lab, 0) for lab in order}


@dataclass
class DataSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    source: str
    balance: str = "none"
    split: str = "random"
    dropped: dict[str, int] | None = None  # rows removed by undersampling, per class
    task: "Task | None" = None  # what the labels are (gptclf.tasks); None: one label per example
    audit_dropped: dict | None = None  # rows left out by --drop-label-issues: which, and why (gptclf.auditing.drop)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "labels": self.labels,
            "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
            "train_counts": class_counts(self.train, self.labels),
            "val_counts": class_counts(self.val, self.labels),
            "test_counts": class_counts(self.test, self.labels),
            "balance": self.balance, "split": self.split,
            **({"dropped": self.dropped} if self.dropped else {}),
            **({"dropped_by_audit": self.audit_dropped} if self.audit_dropped else {}),
            **(self.task.split_notes({"train": self.train, "val": self.val, "test": self.test}) if self.task else {}),
        }

    def describe(self) -> str:
        """One line per split with its class counts (what ``gptclf train`` prints)."""
        def counts(part: list[Example]) -> str:
            notes = self.task.count_note(part) if self.task else []
            return ", ".join([f"{k} {v}" for k, v in class_counts(part, self.labels).items()] + notes)

        return "\n".join(f"  {name}: {len(part)} ({counts(part)})"
                         for name, part in (("train", self.train), ("validation", self.val), ("test", self.test)))


def default_balance(data: str) -> str:
    """The book's undersampling for its SMS data, every row of anyone else's."""
    return "undersample" if is_sms_spam(data) else "none"


def default_split(data: str) -> str:
    """The book's plain shuffle for its SMS run (its exact split), stratified for anyone else's data."""
    return "random" if is_sms_spam(data) else "stratified"


def read_examples(data: str, text_column: str = "text", label_column: str = "label",
                  read_labels: LabelReader | None = None, header: bool | None = None) -> tuple[list[Example], str]:
    """Every row of ``data`` (the SMS Spam Collection or the user's table), empty texts too, in
    file order, and the name of its source: what :func:`load_splits` starts from, and what
    ``gptclf audit`` numbers its rows by."""
    if is_sms_spam(data):
        return load_sms_spam(data)
    return (read_table(data, text_column, label_column, read_labels=read_labels, header=header),
            str(Path(data).expanduser()))


def load_splits(data: str = "sms-spam", *, balance: str, split: str, val: str | None = None,
                test: str | None = None, text_column: str = "text", label_column: str = "label", seed: int = 123,
                train_frac: float = 0.7, val_frac: float = 0.1, examples: list[Example] | None = None,
                task: "Task | None" = None, read_labels: LabelReader | None = None,
                header: bool | None = None) -> DataSplits:
    """Read the data (or take ``examples``, in memory), balance it and split it, with the checks a user needs.

    ``balance`` and ``split`` are resolved options (:meth:`gptclf.config.TrainConfig.resolved`
    owns their defaults). ``task`` (:mod:`gptclf.tasks`) checks the examples' labels; label
    cells are read by ``read_labels`` (the task's, e.g. label sets); ``header`` says whether the
    files have a header row (None: detected, :class:`gptclf.data.tables.Table`). The labels are every label
    of the training split in natural order."""
    if examples is not None:
        source = data
    else:
        examples, source = read_examples(data, text_column, label_column, read_labels, header)
    examples = drop_empty_texts(examples, source)
    if not examples:
        raise GptclfError(f"{source}: no non-empty texts", hint=f"check --text-column ({text_column!r})")
    if task is not None:
        task.check_examples(examples, source)
    classes = Counter(lab for e in examples for lab in e.label_set())
    _check_label_text(classes, examples, source)
    if len(classes) < 2:
        raise GptclfError(f"{source}: only one class ({next(iter(classes), None)!r}) in the labels",
                          hint="a classifier needs at least two classes; check --label-column")
    dropped = None
    if balance == "undersample":
        examples, dropped = _undersample(examples, seed, source)
    cut = stratified_split if split == "stratified" else random_split
    read = lambda path: read_table(path, text_column, label_column, read_labels=read_labels,  # noqa: E731
                                   header=header)
    tr, va, te = _split(examples, val, test, read, seed, train_frac, val_frac, cut)
    for name, part, opt in (("validation", va, "--val"), ("test", te, "--test")):
        if not part:
            raise _empty_split(source, name, opt, examples, split)
    labels = sorted_labels({lab for e in tr for lab in e.label_set()})
    if len(labels) < 2:
        raise GptclfError(f"{source}: the training split has a single class {labels}",
                          hint="add data of the other classes or change the split")
    _check_split_labels(labels, va, te)
    _warn_missing_classes(labels, tr, va, te)
    _warn_leakage(tr, va, te)
    return DataSplits(tr, va, te, labels, source, balance, split, dropped, task)


def _check_label_text(classes: Counter, examples: list[Example], source: str) -> None:
    """Refuse a label that is not writable UTF-8 (a lone surrogate: ``"\\ud800"`` is valid JSON)
    before training, not when config.json is saved at its end. Texts are cleaned (U+FFFD, as
    the tokenizers see them); a label is a name the run keeps, and two labels must not merge."""
    for lab in classes:
        try:
            lab.encode("utf-8")
        except UnicodeEncodeError:
            line = next(e.line for e in examples if lab in e.label_set())
            raise GptclfError(f"{source}: the label {ascii(lab)[:80]} (first at line {line}) holds a lone "
                              "surrogate, which cannot be written as UTF-8",
                              hint="fix the label in the data: a \\ud800-style JSON escape without its pair") from None


def _undersample(examples: list[Example], seed: int, source: str) -> tuple[list[Example], dict[str, int]]:
    """--balance undersample, with a warning that counts what it dropped."""
    before = class_counts(examples)
    examples = create_balanced_dataset(examples, seed)
    after = class_counts(examples)
    dropped = {k: before[k] - after[k] for k in before if before[k] != after[k]}
    if dropped:
        warn(f"{source}: --balance undersample kept {len(examples)} of {sum(before.values())} rows "
             f"(dropped {', '.join(f'{v} {k}' for k, v in dropped.items())}); --balance none keeps them all")
    return examples, dropped


def _split(examples: list[Example], val: str | None, test: str | None, read, seed: int, train_frac: float,
           val_frac: float, cut) -> tuple[list[Example], list[Example], list[Example]]:
    """The training data cut 70/10/20, or, with the user's own --val/--test files (``read``), cut for
    the missing one."""
    if val is None and test is None:
        return cut(examples, train_frac, val_frac, seed)
    va = drop_empty_texts(read(val), val) if val else []
    te = drop_empty_texts(read(test), test) if test else []
    if val is None or test is None:
        # Only one given: split the rest of the training file for the other, seeded.
        frac = val_frac if val is None else 1 - train_frac - val_frac
        tr, other, _ = cut(examples, 1 - frac, frac, seed)
        return (tr, other, te) if val is None else (tr, va, other)
    return random_split(examples, 1.0, 0.0, seed)[0], va, te


def _empty_split(source: str, name: str, opt: str, examples: list[Example], split: str) -> GptclfError:
    """Why a split came out empty: too few examples, or (stratified) only labels too rare to split."""
    if split == "stratified" and len(examples) >= 5:  # a random 10% of 5 or more is not empty
        multi = any(e.labels is not None for e in examples)
        key = rarest_label_key(examples) if multi else (lambda e: e.label)
        groups = Counter(key(e) for e in examples)
        return GptclfError(
            f"{source}: the {name} split is empty: the stratified split keeps a {'rarest ' if multi else ''}label "
            f"with fewer than 3 examples in training, and all {len(groups)} "
            f"{'rarest labels' if multi else 'labels'} here have fewer (at most {max(groups.values())})",
            hint="give each label at least 3 examples, or merge or drop the rare labels (a label "
                 "in validation or test must also be in training)")
    return GptclfError(f"{source}: the {name} split is empty ({len(examples)} examples are too few for the split)",
                       hint=f"add data, or pass your own {name} file with {opt}")


def some(names: Sequence[str], k: int = 8) -> str:
    """A list of labels for a message: all of a few, the first ``k`` and a count of the rest of many."""
    names = list(names)
    return repr(names) if len(names) <= k else f"{names[:k]!r} and {len(names) - k} more"


def _check_split_labels(labels: list[str], va: list[Example], te: list[Example]) -> None:
    for name, part in (("validation", va), ("test", te)):
        unseen = sorted_labels({lab for e in part for lab in e.label_set()} - set(labels))
        if unseen:
            ex = next(e for e in part if set(e.label_set()) & set(unseen))
            raise GptclfError(f"{name} data has label(s) {some(unseen)} never seen in training "
                              f"(first at line {ex.line})",
                              hint=f"the {len(labels)} training labels are {some(labels)}; fix the label or "
                                   "add training examples")


def _warn_missing_classes(labels: list[str], tr: list[Example], va: list[Example], te: list[Example]) -> None:
    for name, part in (("training", tr), ("validation", va), ("test", te)):
        counts = class_counts(part, labels)
        missing = [k for k, v in counts.items() if v == 0]
        if missing:
            # Counts only where they fit in a line: a long-tail label set would print thousands.
            tail = f" (counts: {counts})" if len(counts) <= 20 else ""
            warn(f"the {name} split ({len(part)} texts) has no example of {some(missing)}: "
                 f"its metrics say nothing about them{tail}")


def _warn_leakage(train: list[Example], val: list[Example], test: list[Example]) -> None:
    seen = {e.text for e in train}
    for name, split in (("validation", val), ("test", test)):
        dup = sum(1 for e in split if e.text in seen)
        if dup:
            warn(f"{dup} of {len(split)} {name} texts also appear in the training split "
                 f"(leakage: {name} accuracy is optimistic)")


