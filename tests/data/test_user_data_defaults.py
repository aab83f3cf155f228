"""Issue 15, findings 1, 2, 5 and 12: a user's own data keeps every row, splits are stratified,
the counts are reported, rows dropped or classes missing are warned about with numbers;
in-memory data; labels sort naturally."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

from gptclf import GptclfError
from gptclf.config import TrainConfig
from gptclf.data.memory import from_object, from_texts
from gptclf.data.splits import load_splits, sorted_labels, stratified_split
from gptclf.data.tables import Example
from helpers import load_data
from gptclf.errors import DataWarning

TOPICS = {"sports": 30, "cooking": 20, "tech": 10}  # 60 rows, unbalanced, like the report's CSV


def _rows() -> list[tuple[str, str]]:
    return [(f"{topic} text number {i}", topic) for topic, n in TOPICS.items() for i in range(n)]


def _write_csv(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(_rows())
    return path


def test_user_csv_keeps_every_row_and_every_split_has_every_class(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "my.csv")
    cfg = TrainConfig(data=str(path)).resolved()
    assert (cfg.balance, cfg.split) == ("none", "stratified")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # nothing dropped, nothing missing: no warning
        s = load_splits(str(path), balance=cfg.balance, split=cfg.split)
    assert len(s.train) + len(s.val) + len(s.test) == 60
    summary = s.summary()
    for key in ("train_counts", "val_counts", "test_counts"):
        assert set(summary[key]) == set(TOPICS) and all(v >= 1 for v in summary[key].values()), summary
    assert summary["test_counts"] == {"cooking": 4, "sports": 6, "tech": 2}  # 20 % of each class
    assert (summary["balance"], summary["split"]) == ("none", "stratified")
    assert "tech 2" in s.describe() and "validation: 6" in s.describe()


def test_stratified_split_is_seeded_and_disjoint() -> None:
    ex = [Example(t, lab, i) for i, (t, lab) in enumerate(_rows())]
    a = stratified_split(ex, seed=7)
    b = stratified_split(ex, seed=7)
    c = stratified_split(ex, seed=8)
    assert [[e.text for e in part] for part in a] == [[e.text for e in part] for part in b]
    assert [e.text for e in a[0]] != [e.text for e in c[0]]
    texts = [e.text for part in a for e in part]
    assert sorted(texts) == sorted(t for t, _ in _rows())  # every row exactly once


def test_the_chapters_sms_run_keeps_the_books_defaults(sms_env: Path) -> None:
    cfg = TrainConfig().resolved()
    assert (cfg.balance, cfg.split) == ("undersample", "random")
    with pytest.warns(DataWarning, match=r"kept 1494 of 5574 rows \(dropped 4080 ham\)"):
        s = load_splits("sms-spam", balance=cfg.balance, split=cfg.split)
    assert (len(s.train), len(s.val), len(s.test)) == (1045, 149, 300)  # the book's split, unchanged
    assert s.summary()["dropped"] == {"ham": 4080}


def test_undersampling_user_data_warns_with_the_numbers(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "my.csv")
    with pytest.warns(DataWarning, match=r"kept 30 of 60 rows \(dropped 10 cooking, 20 sports\)"):
        s = load_data(str(path), balance="undersample")
    assert len(s.train) + len(s.val) + len(s.test) == 30


def test_a_split_without_a_class_is_warned_about(tmp_path: Path) -> None:
    rows = [Example(f"a {i}", "a", i) for i in range(40)] + [Example("b 0", "b", 40), Example("b 1", "b", 41)]
    with pytest.warns(DataWarning, match=r"the test split \(\d+ texts\) has no example of \['b'\]"):
        load_data("in-memory (42 rows)", examples=rows)


def test_labels_sort_naturally() -> None:
    assert sorted_labels(["1", "10", "2"]) == ["1", "2", "10"]
    assert sorted_labels(["class 10", "class 9", "class 1"]) == ["class 1", "class 9", "class 10"]
    rows = [Example(f"t{i}", str(lab), i) for i, lab in enumerate([1, 10, 2] * 10)]
    assert load_data("in-memory", examples=rows).labels == ["1", "2", "10"]


def test_in_memory_sources() -> None:
    pd = pytest.importorskip("pandas")
    texts, labels = [t for t, _ in _rows()], [lab for _, lab in _rows()]
    want = [(t, lab) for t, lab in _rows()]
    df = pd.DataFrame({"Sentence": texts, "Topic": labels})
    for got in (from_texts(texts, labels), from_object(df, "sentence", "topic"),
                from_object(list(zip(texts, labels))),
                from_object([{"text": t, "label": lab} for t, lab in want]),
                from_object({"text": texts, "label": labels})):
        assert [(e.text, e.label) for e in got] == want
    # Numbers as labels read as a file would write them; a NaN text is empty (and dropped later).
    ex = from_texts([float("nan"), "x"], [1, 2.0])
    assert [(e.text, e.label) for e in ex] == [("", "1"), ("x", "2")]


@pytest.mark.parametrize("bad, match", [
    (({"text": ["a"]}, ), "no label column"),
    (([("a", "b", "c")], ), "pairs or dicts"),
    ((42, ), "cannot be a int"),
])
def test_in_memory_errors_name_the_problem(bad: tuple, match: str) -> None:
    with pytest.raises(GptclfError, match=match):
        from_object(*bad)
    with pytest.raises(GptclfError, match="2 entries but labels= has 1"):
        from_texts(["a", "b"], ["x"])
    with pytest.raises(GptclfError, match="empty label"):
        from_texts(["a"], [None])
