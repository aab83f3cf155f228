"""scripts/bench_ray_predict.py end to end in small: a generated CSV, the tiny model, both engines
pinned to the same cores; the figures it reports are the ones it measured (row counts checked)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from helpers import SCRIPTS

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_end_to_end_on_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to pin both commands to")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_ray_predict

    rows = 400
    bench_ray_predict.main(["--rows", str(rows), "--cores", "2", "--models", "tiny", "--work", str(tmp_path),
                            "--json", str(tmp_path / "bench.json")])
    (r,) = json.loads((tmp_path / "bench.json").read_text())
    assert (r["model"], r["rows"], r["cores"], r["int8"]) == ("tiny", rows, 2, False)
    for engine in ("local", "ray"):
        assert r[engine]["summary"].startswith(f"wrote {rows} rows"), r[engine]["summary"]
        assert math.isclose(r[engine]["rows_per_second"], rows / r[engine]["wall_seconds"])
        assert r[engine]["job_seconds"] <= r[engine]["wall_seconds"]
    assert len(r["ray"]["peak_rss_mib"]["scorer"]) == 2  # one model copy per worker, each measured
    assert r["overhead_ratio"] == pytest.approx(r["ray"]["wall_seconds"] / r["local"]["wall_seconds"] - 1)
    # the CLI's seconds have one decimal: 400 rows take "0.0s" locally on a fast machine
    if r["local"]["job_seconds"] < 1.0:
        assert r["job_overhead_ratio"] is None
    else:
        assert r["job_overhead_ratio"] == pytest.approx(r["ray"]["job_seconds"] / r["local"]["job_seconds"] - 1)
    out = capsys.readouterr().out
    assert "peak RSS per worker" in out and "overhead ratio (ray / local - 1)" in out
    assert sum(1 for _ in open(tmp_path / f"rows-{rows}.csv", encoding="utf-8")) == rows + 1
