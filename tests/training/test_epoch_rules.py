"""scripts/epoch_rules.py: its record of every epoch, through gptclf's own keep-best rule, gives
exactly the epoch and test accuracy that ``gptclf train`` keeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training

from helpers import SCRIPTS


def _script():
    spec = importlib.util.spec_from_file_location("epoch_rules", SCRIPTS / "epoch_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_epochs_reproduce_the_train_runs_kept_epoch(tmp_path: Path, sms_env: Path,
                                                             tiny_gpt2_config: Path, capsys) -> None:
    rules = _script()
    opts = dict(model=str(tiny_gpt2_config), init="random", epochs=3, eval_freq=40, lr=1e-3, trainable="last_block",
                progress=False)
    run = run_training(TrainConfig(**opts, out=str(tmp_path / "run")), log=lambda s: None)
    metrics = json.loads((run / "metrics.json").read_text())
    argv = ["--model", str(tiny_gpt2_config), "--init", "random", "--epochs", "3", "--eval-freq", "40",
            "--lr", "1e-3", "--trainable", "last_block", "--quiet"]
    assert rules.main(["--seeds", "123,7", "--out", str(tmp_path / "epochs"), "--", *argv]) == 0
    rec = np.load(tmp_path / "epochs" / "seed-123.npz")
    assert rec["val"].shape[0] == rec["test"].shape[0] == 3
    kept = rules.RULES["latest within noise (default)"](rec["val"], rec["y_val"])
    assert kept + 1 == metrics["best_epoch"]
    test_acc = float((rec["test"][kept].argmax(-1) == rec["y_test"]).mean())
    assert test_acc == metrics["test_accuracy"]
    assert rules.RULES["last epoch (the book)"](rec["val"], rec["y_val"]) == 2
    out = capsys.readouterr().out
    assert "latest within noise (default)" in out and "123: " in out and "7: " in out
    # Recorded seeds are not trained again: a second call only reports.
    before = (tmp_path / "epochs" / "seed-7.npz").stat().st_mtime_ns
    rules.main(["--seeds", "7", "--out", str(tmp_path / "epochs"), "--", *argv])
    assert (tmp_path / "epochs" / "seed-7.npz").stat().st_mtime_ns == before
