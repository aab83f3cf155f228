"""--static-shapes with CUDA graph capture against the eager path, on a GPU (skipped elsewhere;
scripts/gpu_checks.sh runs it). fp32 with TF32 matmuls: agreement within TF32 noise, not bits."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf.config import TrainConfig
from gptclf.inference.classifier import Classifier
from gptclf.training.recipe import run_training

from helpers import ROOT, sms_head_csv

SMS_FILE = ROOT.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def sms_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = Path(os.environ.get("GPTCLF_SMS_SPAM", SMS_FILE))
    if not source.exists():
        pytest.skip("no SMS Spam Collection (set GPTCLF_SMS_SPAM)")
    return sms_head_csv(source, tmp_path_factory.mktemp("data") / "sms.csv", 400)


def _run(model: Path, data: Path, out: Path, static: str, **kw) -> tuple[Path, list[str]]:
    logs: list[str] = []
    run = run_training(TrainConfig(model=str(model), data=str(data), balance="none", epochs=2, eval_freq=5, lr=1e-3,
                                   out=str(out), progress=False, device="cuda", precision="fp32",
                                   static_shapes=static, **kw), log=logs.append)
    return run, logs


@pytest.mark.parametrize("kw", [{}, {"trainable": "all"}], ids=["trunk-cache", "no-cache"])
def test_graphs_train_like_the_eager_path(tmp_path: Path, sms_csv: Path, tiny_gpt2: Path, kw: dict) -> None:
    eager, _ = _run(tiny_gpt2, sms_csv, tmp_path / "eager", "off", **kw)
    graphs, logs = _run(tiny_gpt2, sms_csv, tmp_path / "graphs", "on", **kw)
    assert any("one CUDA graph per bucket" in s for s in logs), logs
    me, mg = (json.loads((r / "metrics.json").read_text()) for r in (eager, graphs))
    for k in ("train_loss", "val_loss", "test_loss"):
        assert mg[k] == pytest.approx(me[k], abs=2e-3), k
    for k in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert mg[k] == pytest.approx(me[k], abs=0.02), k
    he, hg = (json.loads((r / "history.json").read_text())["steps"] for r in (eager, graphs))
    assert [s["step"] for s in he] == [s["step"] for s in hg]
    for a, b in zip(he, hg):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-3)


def test_graph_predictions_equal_eager_ones(tmp_path: Path, sms_csv: Path, tiny_gpt2: Path) -> None:
    run, _ = _run(tiny_gpt2, sms_csv, tmp_path / "r", "off", epochs=1)
    texts = [r["text"] for r in csv.DictReader(open(sms_csv, encoding="utf-8"))]
    eager = Classifier.load(run, device="cuda", static_shapes="off").predict_proba(texts, 16)
    static = Classifier.load(run, device="cuda", static_shapes="on")
    assert static.shapes.capture
    for _ in range(2):  # the second pass replays the captured graphs
        np.testing.assert_allclose(static.predict_proba(texts, 16), eager, atol=1e-4, rtol=0)
