"""``gptclf predict --output``: never the input file (it would be replaced by its predictions),
and never a name whose suffix promises a format other than the one written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cli


def _input(tmp_path: Path) -> Path:
    src = tmp_path / "in.csv"
    src.write_text("text\nhello there\nwin a prize\n", encoding="utf-8")
    return src


@pytest.mark.parametrize("how", ["same", "relative", "hardlink", "symlink"])
def test_output_equal_to_input_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path, random_run: Path,
                                          monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    src = _input(tmp_path)
    before = src.read_bytes()
    out = {"same": src, "relative": Path("sub/../in.csv"), "hardlink": tmp_path / "link.csv",
           "symlink": tmp_path / "sym.csv"}[how]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    if how == "hardlink":
        os.link(src, out)
    if how == "symlink":
        os.symlink(src, out)
    code, _, err = cli(capsys, "predict", "--model", str(random_run), "--input", str(src), "--output", str(out))
    assert code != 0 and "is the input file" in err and "Traceback" not in err
    assert src.read_bytes() == before


@pytest.mark.parametrize("name", ["out.parquet", "out.pq", "out.arrow", "out.feather", "out.json"])
def test_output_suffix_of_an_unwritten_format_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                         random_run: Path, name: str) -> None:
    src = _input(tmp_path)
    code, _, err = cli(capsys, "predict", "--model", str(random_run), "--input", str(src),
                       "--output", str(tmp_path / name))
    assert code != 0 and "predict writes csv, tsv, jsonl" in err and "Traceback" not in err
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name, first", [("out.csv", "text,"), ("out.jsonl", '{"text"'), ("out.txt", "text,")])
def test_writable_names_still_work(capsys: pytest.CaptureFixture, tmp_path: Path, random_run: Path,
                                   name: str, first: str) -> None:
    """.txt (no format of its own) keeps the input's format, as before."""
    src = _input(tmp_path)
    code, _, err = cli(capsys, "predict", "--model", str(random_run), "--input", str(src),
                       "--output", str(tmp_path / name))
    assert code == 0, err
    assert (tmp_path / name).read_text(encoding="utf-8").startswith(first)
