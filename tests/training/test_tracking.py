"""--report-to mlflow|tensorboard: the loop's losses, accuracies, learning rate and speed, the
options and the final metrics, read back with each tool's own reader (MLflow's client on a
local file store, TensorBoard's EventAccumulator); MLflow keeps the run directory as an
artifact; without --report-to neither package is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gptclf
from gptclf.errors import GptclfError
from gptclf.training.tracking import mlflow_uri, open_tracker

TOPICS = {"sports": ("match", "goal", "team", "league"), "cooking": ("oven", "recipe", "bake", "salt")}
# Two epochs of 5 steps (40 training texts, batch 8), a loss estimate every 2 steps.
FAST = {"epochs": 2, "trainable": "all", "lr": 1e-3, "batch_size": 8, "eval_freq": 2, "eval_iter": 1,
        "progress": False, "device": "cpu", "lr_schedule": "linear", "warmup_steps": 2}


def _texts() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for topic, words in TOPICS.items():
        for i in range(30):
            texts.append(f"{words[i % 4]} and {words[(i + 1) % 4]} story {i}")
            labels.append(topic)
    return texts, labels


def _train(tiny_gpt2: Path, out: Path, **options) -> tuple[Path, dict, dict]:
    texts, labels = _texts()
    run = Path(gptclf.train(texts=texts, labels=labels, model=str(tiny_gpt2), out=str(out), **FAST, **options))
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return run, history, metrics


def test_mlflow_file_store_holds_the_run(tiny_gpt2: Path, tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    run, history, metrics = _train(tiny_gpt2, tmp_path / "run", report_to="mlflow", tracking_uri=str(store))
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("gptclf").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    rid = found.info.run_id
    assert found.data.params["lr"] == "0.001" and found.data.params["report_to"] == "mlflow"
    assert found.data.params["epochs"] == "2"

    def series(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(rid, key)]

    # Every loss estimate and epoch accuracy of history.json, at its optimizer step.
    assert series("train_loss") == [(s["step"], pytest.approx(s["train_loss"])) for s in history["steps"]]
    assert [v for _, v in series("val_accuracy")] == [pytest.approx(e["val_accuracy"]) for e in history["epochs"]]
    lrs = [v for _, v in series("lr")]
    assert len(lrs) == len(history["steps"]) + 2 and max(lrs) <= 1e-3 and len(set(lrs)) > 1  # warmup, decay
    assert all(v > 0 for _, v in series("examples_per_second"))
    assert found.data.metrics["final/test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(rid, "run")}
    assert {"run/config.json", "run/metrics.json", "run/model.safetensors"} <= artifacts


def test_tensorboard_events_hold_the_run(tiny_gpt2: Path, tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, history, metrics = _train(tiny_gpt2, tmp_path / "runs" / "r1", report_to="tensorboard")
    events = EventAccumulator(str(tmp_path / "runs" / "tensorboard" / "r1"))  # the default: beside the run
    events.Reload()
    loss = events.Scalars("train_loss")
    # Event files store float32: equal to history.json's float64 within float32 rounding.
    assert [e.step for e in loss] == [s["step"] for s in history["steps"]]
    assert [e.value for e in loss] == [pytest.approx(s["train_loss"], rel=1e-6) for s in history["steps"]]
    assert len(events.Scalars("train_accuracy")) == len(history["epochs"]) == 2
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert {"lr", "examples_per_second"} <= set(events.Tags()["scalars"])
    assert "options/text_summary" in events.Tags()["tensors"]


def test_the_core_imports_no_tracker_unless_asked() -> None:
    code = ("import sys, gptclf.cli, gptclf.training.recipe, gptclf.training.tracking; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]", r.stdout


def test_mlflow_uri_is_the_option_else_the_environment_else_mlruns(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(None) == (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert mlflow_uri(None) == "sqlite:///other.db"
    assert mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert mlflow_uri("store") == (tmp_path / "store").resolve().as_uri()


@pytest.mark.parametrize("report_to,package", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_is_a_clear_error(report_to: str, package: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(GptclfError, match=f"--report-to {report_to} needs") as e:
        open_tracker(report_to, str(tmp_path / "t"), tmp_path / "run", print)
    assert f"gptclf[{report_to}]" in str(e.value)


def test_tune_refuses_to_report_rather_than_ignore_it() -> None:
    from gptclf.config import TrainConfig, TuneOptions
    from gptclf.training.tune import run_tune

    with pytest.raises(GptclfError, match="gptclf tune does not report to mlflow"):
        run_tune(TrainConfig(report_to="mlflow"), TuneOptions())
