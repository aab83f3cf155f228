"""``gptclf runs``: one line per run under runs/ from its config.json and metrics.json, and a
line that says what is wrong for an unfinished, interrupted or damaged one; never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli, random_classifier, write_run

from gptclf.rundir.save import directory_bytes
from gptclf.rundir.weights import human_bytes

FIXTURE = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory, micro_gpt2_config: Path) -> Path:
    root = tmp_path_factory.mktemp("runs-listing") / "runs"
    good = write_run(root / "20261201-101010", random_classifier(micro_gpt2_config), labels=("ham", "spam"),
                     train={"epochs": 5, "model": str(micro_gpt2_config), "data": "sms-spam"})
    metrics = json.loads((good / "metrics.json").read_text())
    (good / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 0.98333, "best_epoch": 3}))
    shutil.copytree(FIXTURE, root / "old-0.1.0")  # a run of an older gptclf
    broken = shutil.copytree(good, root / "broken")
    (broken / "config.json").write_text("{not json")
    interrupted = root / "stopped"
    interrupted.mkdir()
    (interrupted / "metrics.json").write_text(json.dumps({"interrupted": True}))
    (root / "20261203-000000.partial").mkdir()
    (root / "20261203-000000.partial" / "run.json").write_text("{}")
    (root / "tensorboard" / "20261201-101010").mkdir(parents=True)  # not a run: left out
    (root / ".x.tmp-123").mkdir()  # an atomic save's temporary: left out
    assert (root / "latest").resolve() == good.resolve()  # save_run points runs/latest at it
    return root


def listed(capsys: pytest.CaptureFixture, root: Path) -> dict[str, dict[str, str]]:
    code, out, err = cli(capsys, "runs", str(root), "--json")
    assert code == 0, err
    return {r["run"]: r for r in json.loads(out)}


def test_each_run_has_its_line(runs_dir: Path, micro_gpt2_config: Path, capsys: pytest.CaptureFixture) -> None:
    rows = listed(capsys, runs_dir)
    assert set(rows) == {"20261201-101010 (latest)", "old-0.1.0", "broken", "stopped", "20261203-000000.partial"}
    good = rows["20261201-101010 (latest)"]
    assert good["labels"] == "ham,spam" and good["test_accuracy"] == "98.33%" and good["kept_epoch"] == "3/5"
    # A local base is named by its folder; config.json's data source, else the option given.
    assert good["base"] == micro_gpt2_config.name and good["data"] == "sms-spam"
    assert good["status"] == "ok" and good["size"] == human_bytes(directory_bytes(runs_dir / "20261201-101010"))
    old = rows["old-0.1.0"]
    assert old["labels"] == "cooking,sports,tech" and old["test_accuracy"] == "91.67%" and old["data"] == "data.jsonl"
    assert old["base"] == "base" and old["kept_epoch"] == "last/2"  # no best epoch recorded: the last was kept


def test_what_is_not_a_finished_run_says_why(runs_dir: Path, capsys: pytest.CaptureFixture) -> None:
    rows = listed(capsys, runs_dir)
    assert rows["broken"]["status"] == "config.json unreadable"
    assert rows["broken"]["test_accuracy"] == "98.33%"  # what can be read still is
    assert rows["stopped"]["status"] == "no config.json; interrupted"
    partial = rows["20261203-000000.partial"]["status"]
    assert partial.startswith("unfinished: gptclf train --resume") and partial.endswith("20261203-000000")


def test_the_table_is_aligned_text(runs_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "runs", str(runs_dir))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 6
    assert lines[0].split()[:3] == ["run", "date", "base"] and "test acc" in lines[0] and "kept epoch" in lines[0]
    col = lines[0].index("test acc")
    assert lines[1 + [i for i, ln in enumerate(lines[1:]) if "(latest)" in ln][0]][col:].startswith("98.33%")


def test_one_run_directory_or_none_at_all(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one = listed(capsys, runs_dir / "20261201-101010")
    assert list(one) == ["20261201-101010"]
    code, _, err = cli(capsys, "runs", str(tmp_path / "nothing"))
    assert code == 2 and "no such directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, out, _ = cli(capsys, "runs", str(tmp_path / "empty"))
    assert code == 0 and out.startswith("no runs in")
