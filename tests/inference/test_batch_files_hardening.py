"""Duplicate columns
are refused by batch prediction as by training, the header check is linear, a killed
writer's temporaries are cleaned up and the output keeps the mode of the file it replaces."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gptclf.errors import GptclfError
from gptclf.inference.batch_files import predict_file


@pytest.mark.parametrize("header", ["id,note,text,note", "id,text,text", "text,Text,text"])
def test_duplicate_columns_are_refused(tiny_classifier: Any, tmp_path: Path, header: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(header + "\n" + ",".join(["x"] * len(header.split(","))) + "\n", encoding="utf-8")
    with pytest.raises(GptclfError, match="(?i)duplicate|more than once|twice"):
        predict_file(tiny_classifier, src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_duplicate_jsonl_keys_are_refused(tiny_classifier: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "text": "b"}\n', encoding="utf-8")
    with pytest.raises(GptclfError):
        predict_file(tiny_classifier, src, tmp_path / "out.jsonl")


def test_a_wide_header_is_checked_in_linear_time(tiny_classifier: Any, tmp_path: Path) -> None:
    # 200,000 columns: the old pairwise check took minutes (40,000 took 11.7 s); linear is
    # well under a second even on a loaded machine. The bound is loose on purpose.
    n = 200_000
    src = tmp_path / "wide.csv"
    names = [f"c{i}" for i in range(n)]
    src.write_text(",".join(names + ["text", "c7"]) + "\n" + ",".join(["1"] * (n + 2)) + "\n", encoding="utf-8")
    t0 = time.monotonic()
    with pytest.raises(GptclfError):
        predict_file(tiny_classifier, src, tmp_path / "out.csv")
    assert time.monotonic() - t0 < 60


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_writers_temporaries_are_removed_and_the_mode_is_kept(tiny_classifier: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\nwin a prize now\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    os.chmod(out, 0o644)
    stale = tmp_path / f".out.csv.tmp-{_dead_pid()}"  # what a SIGKILLed predict left
    stale.write_text("half a file")
    predict_file(tiny_classifier, src, out)
    assert not stale.exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert out.read_text().startswith("text,predicted_label")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
