"""--multi-label data: label sets read from lists (JSONL, JSON, Parquet, in memory) or delimited
strings (CSV, TSV), the empty set, clear errors, the approximate stratified split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gptclf.data.memory import from_object, from_texts
from gptclf.data.splits import stratified_split
from gptclf.data.tables import Example, label_list, label_sets, read_table
from gptclf.errors import DataWarning, GptclfError
from helpers import load_data


def _sets(examples: list[Example]) -> list[tuple[str, ...]]:
    return [e.labels for e in examples]  # type: ignore[misc]


def test_jsonl_lists_and_the_empty_set(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": []}, {"text": "c", "label": [10, "x", "x"]},
            {"text": "d", "label": None}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_table(p, read_labels=label_sets())
    assert _sets(ex) == [("x", "y"), (), ("10", "x"), ()]  # numbers as written, duplicates dropped
    assert all(e.label is None for e in ex) and ex[0].label_set() == ("x", "y")


def test_csv_delimited_strings_with_and_without_quotes(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('text,tags\nhello,sports|politics\nbye,\n"x, y","a, b|c"\nz,"[""q"", ""r""]"\nw,"[\'s\', \'t\']"\n')
    ex = read_table(p, label_column="tags", read_labels=label_sets())
    # '|' needs no quoting; a cell holding a JSON list, or the Python repr pandas writes, is a list
    assert _sets(ex) == [("sports", "politics"), (), ("a, b", "c"), ("q", "r"), ("s", "t")]
    ex = read_table(p, label_column="tags", read_labels=label_sets(","))
    assert ex[2].labels == ("a", "b|c")


def test_tsv_and_parquet_lists(tmp_path: Path) -> None:
    (tmp_path / "d.tsv").write_text("text\tlabel\none\tb;a\n")
    assert read_table(tmp_path / "d.tsv", read_labels=label_sets(";"))[0].labels == ("b", "a")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["u", "v"], "label": [["k", "m"], []]}), tmp_path / "d.parquet")
    assert _sets(read_table(tmp_path / "d.parquet", read_labels=label_sets())) == [("k", "m"), ()]


def test_mixed_lists_and_strings_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": ["x"]}\n{"text": "b", "label": "x,y"}\n')
    with pytest.raises(GptclfError, match=r"mixes lists of labels \(.*d.jsonl:1\) with strings \(.*d.jsonl:2"):
        read_table(p, read_labels=label_sets())
    with pytest.raises(GptclfError, match="mixes lists"):
        from_texts(["a", "b"], [["x"], "y"], label_sets())


def test_a_list_without_multi_label_says_what_to_pass(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": ["x", "y"]}\n')
    with pytest.raises(GptclfError) as e:
        read_table(p)
    assert "--multi-label" in e.value.hint
    with pytest.raises(GptclfError, match="the label is a list"):
        from_texts(["a"], [["x"]])


def test_bad_list_cells() -> None:
    with pytest.raises(GptclfError, match="nested"):
        label_list([["a"]], "f:1", "label")
    with pytest.raises(GptclfError, match="not valid JSON"):
        label_list("[a, b]", "f:1", "label")  # brackets, but neither JSON nor a Python literal
    with pytest.raises(GptclfError, match="nested"):
        label_list('[{"a": 1}]', "f:1", "label")
    with pytest.raises(GptclfError, match="not valid JSON"):
        label_list("[" * 100_000 + "]" * 100_000, "f:1", "label")  # an untrusted cell: an error, not a crash


def test_in_memory_lists_and_dataframes() -> None:
    ex = from_texts(["a", "b"], [["x", "y"], []], label_sets())
    assert _sets(ex) == [("x", "y"), ()]
    assert _sets(from_texts(["a"], ["x;y"], label_sets(";"))) == [("x", "y")]
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"body": ["a", "b"], "tags": [["x"], ["y", "x"]]})
    assert _sets(from_object(df, "body", "tags", read_labels=label_sets())) == [("x",), ("y", "x")]
    np = pytest.importorskip("numpy")
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": [np.array(["x", "y"]), np.array([]), np.array([3])]})
    assert _sets(from_object(df, read_labels=label_sets())) == [("x", "y"), (), ("3",)]  # as pandas reads Parquet lists
    ints = pd.DataFrame({"text": ["a", "b"], "label": [3, 10]})  # numpy scalars: one label each
    assert _sets(from_object(ints, read_labels=label_sets())) == [("3",), ("10",)]


def _rows(n: int) -> list[Example]:
    # 'rare' on every 10th text, 'common' on most, some texts with none
    return [Example(f"text {i}", None, i, tuple(lab for lab, on in (("common", i % 3 != 0), ("rare", i % 10 == 0),
                                                                   ("mid", i % 4 == 0)) if on)) for i in range(n)]


def test_the_split_reaches_every_label_through_its_rarest_examples() -> None:
    tr, va, te = stratified_split(_rows(100), seed=1)
    assert len(tr) + len(va) + len(te) == 100
    for part in (va, te):
        assert {lab for e in part for lab in e.label_set()} == {"common", "rare", "mid"}


def test_load_splits_multi_label(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = _rows(60)
    p.write_text("".join(json.dumps({"text": e.text, "label": list(e.labels)}) + "\n" for e in rows))
    s = load_data(str(p), multi_label=True, seed=3)
    assert s.task.name == "multi-label" and s.labels == ["common", "mid", "rare"] and s.balance == "none"
    summary = s.summary()
    assert summary["multi_label"] and sum(summary["no_label_counts"].values()) == sum(not e.labels for e in rows) > 0
    assert summary["train_counts"]["rare"] + summary["val_counts"]["rare"] + summary["test_counts"]["rare"] == 6
    with pytest.raises(GptclfError, match="undersample cannot be used with --multi-label"):
        load_data(str(p), multi_label=True, balance="undersample")


def test_a_label_missing_from_a_split_is_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": ["a"] if i % 2 else ["b"]} for i in range(30)]
    rows.append({"text": "only", "label": ["c", "a"]})  # 'c' once: training only
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(DataWarning, match=r"validation split .* has no example of \['c'\]"):
        s = load_data(str(p), multi_label=True)
    assert s.labels == ["a", "b", "c"]


def test_one_label_in_all_the_data_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": ["a"] if i % 2 else []}) + "\n" for i in range(20)))
    with pytest.raises(GptclfError, match="only one class"):
        load_data(str(p), multi_label=True)


@pytest.mark.parametrize("delimiter", ["|", ";"])
def test_a_label_containing_the_delimiter_is_refused(tmp_path: Path, delimiter: str) -> None:
    # predict --output x.csv joins a row's labels with the delimiter: 'food|drink' would read
    # back as two labels, so the name is refused when the data is read.
    p = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": ["a"] if i % 2 else [f"food{delimiter}drink"]} for i in range(30)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GptclfError, match=rf"the label 'food\{delimiter}drink', which contains the label "
                                          rf"delimiter '\{delimiter}'") as e:
        load_data(str(p), multi_label=True, label_delimiter=delimiter)
    assert "--label-delimiter" in e.value.hint
    other = "," if delimiter == "|" else "|"  # another delimiter: the same data is fine
    assert load_data(str(p), multi_label=True, label_delimiter=other).labels == ["a", f"food{delimiter}drink"]


def _long_tail(p: Path, per_text: int) -> Path:
    import random

    r = random.Random(0)
    names = [f"label{j}" for j in range(1000)]
    p.write_text("".join(json.dumps({"text": f"text {i} here", "label": r.sample(names, per_text) if per_text > 1
                                     else [names[i]]}) + "\n" for i in range(600)))
    return p


def test_a_long_tail_label_set_gets_a_short_accurate_error(tmp_path: Path) -> None:
    # 600 texts, one label each of 1,000: every label too rare for the stratified split to reach
    # validation. Not "600 examples are too few": the rarity is what the user must fix.
    p = _long_tail(tmp_path / "d.jsonl", 1)
    with pytest.raises(GptclfError) as e:
        load_data(str(p), multi_label=True)
    assert len(str(e.value)) < 400, str(e.value)
    assert "all 600 rarest labels here have fewer (at most 1)" in e.value.message
    assert "at least 3 examples" in e.value.hint


def test_long_tail_warnings_and_errors_stay_short(tmp_path: Path) -> None:
    p = _long_tail(tmp_path / "d.jsonl", 2)
    with pytest.warns(DataWarning) as w:
        load_data(str(p), multi_label=True)
    missing = [str(x.message) for x in w if "has no example of" in str(x.message)]
    assert missing and all(len(m) < 300 and re.search(r"and \d+ more", m) for m in missing), missing
    val = tmp_path / "val.jsonl"  # labels never seen in training, many of them
    val.write_text("".join(json.dumps({"text": f"v{i}", "label": [f"new{i}"]}) + "\n" for i in range(500)))
    with pytest.raises(GptclfError, match=r"label\(s\) \['new0', .*\] and 492 more never seen") as e:
        load_data(str(p), multi_label=True, val=str(val))
    assert len(str(e.value)) < 500, str(e.value)
