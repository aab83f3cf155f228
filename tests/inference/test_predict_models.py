"""``gptclf predict --model a=RUN1 --model b=RUN2 --input FILE --output OUT`` (inference/batch_group.py):
one pass over the file through a model group writes every model's columns, prefixed by its name,
and each model's columns equal that run's own ``gptclf predict --input`` output (probabilities
within 1e-5, as tests/inference/test_model_group.py argues; the decisions the same)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import cli, group_runs

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["win a free prize now", "see you at lunch", "", "URGENT call 0800 to claim", "ok " * 60,
         "are we still on for tomorrow?", "Free entry!!! txt WIN", "lol"]
MODELS = ["one", "two", "multi", "lora", "whole", "other"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return group_runs(tmp_path_factory.mktemp("predict-group"))


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[i, t] for i, t in enumerate(TEXTS)])
    return path


def _read(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_every_models_columns_equal_that_run_alone(capsys: pytest.CaptureFixture, runs: dict[str, Path],
                                                   table: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"all{suffix}"
    specs = [a for n in MODELS for a in ("--model", f"{n}={runs[n]}")]
    code, _, err = cli(capsys, "predict", *specs, "--input", str(table), "--output", str(out), "--chunk-size", "3")
    assert code == 0, err
    together = _read(out)
    assert [str(r["id"]) for r in together] == [str(i) for i in range(len(TEXTS))]  # every row, in order
    for name in MODELS:
        alone_out = tmp_path / f"{name}{suffix}"
        code, _, err = cli(capsys, "predict", "--model", str(runs[name]), "--input", str(table),
                           "--output", str(alone_out))
        assert code == 0, err
        alone = _read(alone_out)
        added = [c for c in alone[0] if c not in ("id", "text")]
        for a, t in zip(alone, together):
            for col in added:
                got, want = t[f"{name}_{col}"], a[col]
                if col.startswith("p_") or col == "predicted_score":
                    assert abs(float(got) - float(want)) <= 1e-5, (name, col)
                else:
                    assert got == want, (name, col)
    assert together[0].keys() - {"id", "text"} == {f"{n}_{c}" for n in MODELS
                                                   for c in _read(tmp_path / f"{n}{suffix}")[0] if c not in ("id", "text")}
    probs = np.array([[float(r[f"one_p_{lab}"]) for lab in ("ham", "spam")] for r in together])
    assert np.abs(probs.sum(1) - 1).max() <= 1e-5


def test_several_models_need_a_file(capsys: pytest.CaptureFixture, runs: dict[str, Path]) -> None:
    code, _, err = cli(capsys, "predict", "--model", f"a={runs['one']}", "--model", f"b={runs['two']}", "hello")
    assert code != 0 and "--input" in err and "Traceback" not in err
