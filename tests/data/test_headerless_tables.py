"""A CSV/TSV file with no header row (the SMS collection's own ``label<TAB>text``): detected
from its first row or named with --no-header, its label column told by its few distinct values,
and said in a warning; a header the reader cannot match names --no-header in its error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from gptclf.data.sms_spam import read_sms_spam
from gptclf.data.splits import load_splits
from gptclf.data.tables import read_table
from gptclf.errors import DataWarning, GptclfError


def read_warned(path: Path, **kw) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_table(path, **kw)
    return examples, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_the_real_sms_file_reads_as_label_text_exactly_as_its_own_reader(sms_file: Path) -> None:
    examples, said = read_warned(sms_file)
    ref = read_sms_spam(sms_file)
    # Every message as the line-by-line reader keeps it: 5,574, quotes untouched (a TSV
    # read with quote characters merges four lines into two and strips 536 texts' quotes).
    assert len(examples) == len(ref) == 5574
    assert [(e.text, e.label, e.line) for e in examples] == [(e.text, e.label, e.line) for e in ref]
    assert len(said) == 1 and "no header row" in said[0] and "read as label,text" in said[0], said


def test_a_part_of_the_sms_file_trains_through_load_splits(sms_file: Path, tmp_path: Path) -> None:
    # Not the checksummed file, so it goes through the table reader (the error of the issue).
    part = tmp_path / "sms.tsv"
    part.write_bytes(b"".join(sms_file.read_bytes().splitlines(keepends=True)[:400]))
    with pytest.warns(DataWarning, match="no header row"):
        splits = load_splits(str(part), balance="none", split="stratified")
    assert splits.labels == ["ham", "spam"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 400


def test_text_label_order_is_told_by_the_labels_few_values(tmp_path: Path) -> None:
    rows = [("win a prize, now", "spam"), ("see you at six", "ham"), ("lunch at noon?", "ham"),
            ("free entry, text back", "spam")]
    path = tmp_path / "pairs.csv"
    path.write_text("".join(f'"{t}",{lab}\n' for t, lab in rows), encoding="utf-8")
    examples, said = read_warned(path)
    assert [(e.text, e.label) for e in examples] == rows  # CSV quotes still read in a CSV
    assert "read as text,label" in said[0] and "column 2" in said[0], said


def test_a_header_with_other_names_is_an_error_that_names_no_header(tmp_path: Path) -> None:
    path = tmp_path / "named.csv"
    path.write_text("message,category\nhello there,ham\nwin now,spam\n", encoding="utf-8")
    with pytest.raises(GptclfError, match="no text column 'text'") as e:
        read_table(path)
    assert "--no-header" in str(e.value) and "--text-column" in str(e.value)


def test_no_header_reads_a_first_row_that_detection_would_not(tmp_path: Path) -> None:
    # No space in either cell: it could be a header, so only --no-header reads it as data.
    path = tmp_path / "short.tsv"
    path.write_text("spam\tWINNER\nham\tok\nham\tlater\n", encoding="utf-8")
    with pytest.raises(GptclfError, match="--no-header"):
        read_table(path)
    examples, said = read_warned(path, header=False)
    assert [(e.text, e.label) for e in examples] == [("WINNER", "spam"), ("ok", "ham"), ("later", "ham")]
    assert "(--no-header)" in said[0]


def test_a_first_row_whose_label_never_recurs_is_taken_for_a_header(tmp_path: Path) -> None:
    # Looks like data (a space, no known name) but "is spam" is no class of the rows below.
    path = tmp_path / "odd.csv"
    path.write_text("email body,is spam\nhello there,no\nwin now,yes\nsee you,no\n", encoding="utf-8")
    with pytest.raises(GptclfError, match="(?s)no text column 'text'.*--no-header"):
        read_table(path)
    assert len(read_table(path, header=False)) == 4


def test_no_header_needs_two_columns_of_a_csv_or_tsv(tmp_path: Path) -> None:
    three = tmp_path / "three.csv"
    three.write_text("a,b c,d\ne,f g,h\n", encoding="utf-8")
    with pytest.raises(GptclfError, match="two columns .* the first row has 3"):
        read_table(three, header=False)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "hi", "label": "a"}\n', encoding="utf-8")
    with pytest.raises(GptclfError, match="--no-header is for CSV and TSV"):
        read_table(jsonl, header=False)
