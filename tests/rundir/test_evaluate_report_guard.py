"""``gptclf evaluate --report RUN`` overwrote the run's own
metrics.json, report.html and plots (and /v1/model then showed no test metrics)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_evaluate_report_refuses_a_model_directory(tiny_run: Path, small_sms: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # never risk the shared fixture
    before = digests(run)
    r = subprocess.run([sys.executable, "-m", "gptclf", "evaluate", "--model", str(run), "--data", str(small_sms),
                        "--report", str(run)], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "is a model directory" in r.stderr and "evaluations" in r.stderr
    assert digests(run) == before

    elsewhere = run / "evaluations" / "small"
    r = subprocess.run([sys.executable, "-m", "gptclf", "evaluate", "--model", str(run), "--data", str(small_sms),
                        "--report", str(elsewhere)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "metrics.json").is_file() and (elsewhere / "report.html").is_file()
    assert {k: v for k, v in digests(run).items()} == before  # the run's own files untouched
