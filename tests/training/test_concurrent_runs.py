"""Two runs, one output: a run holds its output directory exclusively from before training to
after the save. A default name is one no other run (finished, unfinished or running) has,
even for runs started in the same second; an explicit --out held by another run is refused
at once, with a hint, before any data is read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, env_with, train_args

from gptclf.rundir.save import claim_run_dir


def _data(path: Path) -> Path:
    rows = [{"text": f"text number {i}", "label": ["ham", "spam"][i % 2]} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_claims_in_the_same_second_get_different_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20990101-000000")
    with claim_run_dir(None, tmp_path) as a, claim_run_dir(None, tmp_path) as b:
        assert a != b and {a.name, b.name} == {"20990101-000000", "20990101-000000-2"}
        with pytest.raises(Exception, match="another gptclf process .* is writing to"):
            with claim_run_dir(a):
                pass
    with claim_run_dir(None, tmp_path) as c:  # both released: the first name is free again
        assert c.name == "20990101-000000"
    assert [p.name for p in tmp_path.iterdir()] == []  # no lock files left behind


def test_default_out_avoids_a_running_run_of_the_same_second(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                             micro_gpt2_config: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20990101-000000")
    monkeypatch.chdir(tmp_path)
    data = _data(tmp_path / "d.jsonl")
    with claim_run_dir(None) as running:  # another run, started this second, still training
        argv = [a for a in train_args(micro_gpt2_config, data, tmp_path / "x") if a not in ("--out", str(tmp_path / "x"))]
        code, _, err = cli(capsys, *argv)
        assert code == 0, err
    assert running == Path("runs/20990101-000000") and not running.exists()
    assert (tmp_path / "runs" / "20990101-000000-2" / "config.json").is_file()


def test_explicit_out_held_by_another_process_is_refused_at_once(tmp_path: Path, micro_gpt2_config: Path) -> None:
    import os

    data = _data(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    with claim_run_dir(out):  # this test process is "the other run"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "gptclf", *train_args(micro_gpt2_config, data, out)],
                           capture_output=True, text=True, env=env_with(HF_HUB_OFFLINE="1"), timeout=300)
        assert r.returncode != 0
        assert f"another gptclf process (pid {os.getpid()}) is writing to {out}" in r.stderr
        assert "hint: wait for it to finish, or choose another --out" in r.stderr
        assert "Traceback" not in r.stderr and "data:" not in r.stderr  # before any data was read
        assert time.perf_counter() - t < 120
    assert not out.exists() and not (tmp_path / "run.partial").exists()
    r = subprocess.run([sys.executable, "-m", "gptclf", *train_args(micro_gpt2_config, data, out)],
                       capture_output=True, text=True, env=env_with(HF_HUB_OFFLINE="1"), timeout=300)
    assert r.returncode == 0, r.stderr  # released: the same --out now trains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "latest", "run"]  # no lock file left
