"""Diverged training is an error with no saved model, non-finite
options are refused, and a failed run's ``<out>.partial/`` can be discarded with --overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptclf.config import TrainConfig
from gptclf.errors import GptclfError


@pytest.fixture(scope="module")
def tiny_data(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    path = tmp_path_factory.mktemp("div-data") / "small.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for label in ("ham", "spam"):
            for text in [t for lab, t in rows if lab == label][:100]:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptclf", "train", "--quiet", "--epochs", "1", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("option,value", [("lr", "inf"), ("lr", "nan"), ("weight_decay", "nan"),
                                          ("warmup_ratio", "nan"), ("clip_grad_norm", "inf"),
                                          ("lora_alpha", "-inf")])
def test_non_finite_float_options_are_refused(option: str, value: str) -> None:
    with pytest.raises(GptclfError, match=f"--{option.replace('_', '-')} must be a finite number"):
        TrainConfig(model="gpt2-small", **{option: float(value)}).resolved()


def test_lr_inf_on_the_command_line_is_a_clear_error(tmp_path: Path) -> None:
    r = train("--lr", "inf", "--out", str(tmp_path / "run"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--lr must be a finite number" in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_divergence_stops_training_and_overwrite_starts_again(tiny_gpt2: Path, tiny_data: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["--model", str(tiny_gpt2), "--data", str(tiny_data), "--trainable", "all", "--out", str(out)]
    r = train(*base, "--lr", "1e4", "--checkpoint-every", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "training diverged" in r.stderr and "no model was saved" in r.stderr
    assert not out.exists()  # no model written with NaN weights
    partial = out.with_name("run.partial")
    assert partial.is_dir()
    # The failed run's checkpoints block a plain rerun, and the message names the way out...
    r = train(*base, "--lr", "5e-4")
    assert r.returncode != 0 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    # ...which discards them and trains.
    r = train(*base, "--lr", "5e-4", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and not partial.exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(v == v for v in (metrics["test_accuracy"], metrics["test_loss"]))  # no NaN


def test_overwrite_leaves_a_folder_that_is_not_a_checkpoint_alone(tmp_path: Path) -> None:
    from gptclf.training.state import discard_partial

    mine = tmp_path / "run.partial"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(GptclfError, match="not a gptclf checkpoint folder"):
        discard_partial(mine)
    assert (mine / "thesis.tex").exists()


def test_checkpoint_and_model_refuse_non_finite_weights() -> None:
    import torch

    from gptclf.training.loop import Trainer

    t = Trainer.__new__(Trainer)  # only what check_finite reads
    t.trainable = [torch.nn.Parameter(torch.tensor([1.0, float("nan")]))]
    t.global_step, t.cfg = 7, TrainConfig(lr=1e-3)
    with pytest.raises(GptclfError, match="step 8: some trained weights are not finite"):
        t.check_finite()
    t.trainable = [torch.nn.Parameter(torch.ones(2))]
    t.check_finite()
