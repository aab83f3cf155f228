"""Issue 15, findings 9 and 10: a reader that leaves (``| head -1``) never aborts training, and a
log without a terminal gets plain progress lines (phase, epoch, position, rate, ETA)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from gptclf.cli.train import PipeSafe
from gptclf.progress import PlainProgress, format_seconds


def _small_csv(path: Path) -> Path:
    rows = [("goal for the team", "sports"), ("bake the bread", "cooking"), ("a fast laptop chip", "tech")]
    path.write_text("text,label\n" + "".join(f"{t} {i},{lab}\n" for i in range(12) for t, lab in rows))
    return path


def test_train_survives_a_closed_pipe_and_logs_plain_progress(tmp_path: Path, tiny_gpt2: Path) -> None:
    data = _small_csv(tmp_path / "topics.csv")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gptclf", "train", "--model", str(tiny_gpt2), "--data", str(data), "--epochs", "2",
           "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    # `gptclf train ... 2>&1 | head -1`: read one line, then the reader is gone.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    first = p.stdout.readline()
    p.stdout.close()
    assert p.wait(timeout=600) == 0 and first
    assert (out / "model.safetensors").exists() and (out / "test.jsonl").exists()
    assert not json.loads((out / "metrics.json").read_text())["interrupted"]

    # The same run with its log in a file: plain lines for every phase.
    r = subprocess.run(cmd[:-1] + [str(tmp_path / "run2")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    log = r.stderr
    for line in ("  train: 27 (cooking 9, sports 9, tech 9)", "  validation: 3 (cooking 1, sports 1, tech 1)",
                 "  test: 6 (cooking 2, sports 2, tech 2)", "balance none, stratified split",
                 "train: epoch 1/2 | batch 6/6 (100%)", "examples/s", "train: epoch 2/2 |",
                 "evaluate: every split in full"):
        assert line in log, log


def test_plain_progress_lines() -> None:
    lines: list[str] = []
    p = PlainProgress("train: epoch 1/3", 4, "batch", lines.append, every=0.0)
    p.update(1, 8)
    assert lines[-1].startswith("train: epoch 1/3 | batch 1/4 (25%) | ") and "examples/s" in lines[-1]
    assert "ETA " in lines[-1]
    p.update(3, 24)
    assert "batch 4/4 (100%)" in lines[-1] and "took " in lines[-1]
    quiet = PlainProgress("x", 4, "batch", lines.append, enabled=False)
    quiet.update(4)
    assert len(lines) == 2
    assert (format_seconds(5), format_seconds(65), format_seconds(3700)) == ("5s", "1m05s", "1h01m")


def test_pipe_safe_drops_writes_after_the_reader_left() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    safe = PipeSafe(Closed())
    assert safe.write("hello") == 5 and safe.broken
    safe.flush()  # no error either
