"""Temperature scaling: the ECE and the fit on hand-made numbers, and the stored temperature
applied in every prediction path (Python, the predict CLI, batch files, HTTP)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import env_with
from gptclf.errors import GptclfError
from gptclf.inference.batch_files import predict_file
from gptclf.inference.classifier import Classifier
from gptclf.metrics import expected_calibration_error, reliability_bins
from gptclf.training.calibrate import fit_temperature, nll, softmax

TEXTS = ["WINNER!! You have won a free prize, call now", "ok see you at lunch tomorrow", "hi"]


def test_ece_on_a_hand_made_example() -> None:
    # Confidences 0.9, 0.9 (one right, one wrong) and 0.6 (right), 0.3 -> top class 0.7 (wrong).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    y = [0, 1, 1, 0]
    bins = reliability_bins(y, probs, n_bins=10)
    # Bins (0.8, 0.9]: conf 0.9, acc 0.5; (0.5, 0.6]: conf 0.6, acc 1; (0.6, 0.7]: conf 0.7, acc 0.
    assert [(b["count"], b["confidence"], b["accuracy"]) for b in bins] == \
        [(1, pytest.approx(0.6), 1.0), (1, pytest.approx(0.7), 0.0), (2, pytest.approx(0.9), 0.5)]
    expected = (1 * 0.4 + 1 * 0.7 + 2 * 0.4) / 4
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(expected)
    # A perfectly calibrated set: confidence 1 and always right.
    assert expected_calibration_error([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_fit_recovers_an_over_confident_models_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 3))
    p = softmax(true_logits)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, y)  # scores three times too sharp
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(true_logits * 3.0, y, t) < nll(true_logits * 3.0, y, 1.0)
    after = expected_calibration_error(y, softmax(true_logits * 3.0, t))
    before = expected_calibration_error(y, softmax(true_logits * 3.0))
    assert after < 0.03 < before
    assert fit_temperature(true_logits * 3.0, y) == t  # deterministic
    assert fit_temperature(np.zeros((0, 2)), []) == 1.0


@pytest.fixture(scope="module")
def hot_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the tiny run: one with temperature 1 (raw scores), one with 2.5."""
    root = tmp_path_factory.mktemp("temperature")
    out = []
    for name, t in (("raw", 1.0), ("hot", 2.5)):
        d = root / name
        shutil.copytree(tiny_run, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["temperature"] = t
        (d / "config.json").write_text(json.dumps(cfg))
        out.append(d)
    return out[0], out[1]


def _tempered(raw: np.ndarray, t: float) -> np.ndarray:
    # log p = logits + const per row, so softmax(log p / T) = softmax(logits / T).
    return softmax(np.log(raw.astype(np.float64)), t)


def test_classifier_applies_the_stored_temperature(hot_run: tuple[Path, Path]) -> None:
    raw_dir, hot_dir = hot_run
    raw, hot = Classifier.load(raw_dir, device="cpu"), Classifier.load(hot_dir, device="cpu")
    assert hot.temperature == 2.5 and raw.temperature == 1.0
    p_raw, p_hot = raw.predict_proba(TEXTS), hot.predict_proba(TEXTS)
    assert np.abs(p_hot - _tempered(p_raw, 2.5)).max() < 1e-5
    assert (p_hot.argmax(1) == p_raw.argmax(1)).all()  # the label never changes
    assert p_hot.max(1).max() < p_raw.max(1).max()  # T > 1 softens
    assert hot.predict(TEXTS[0])[0]["score"] == pytest.approx(float(p_hot[0].max()), abs=1e-6)


def test_predict_cli_and_batch_files_use_it(hot_run: tuple[Path, Path], tmp_path: Path) -> None:
    raw_dir, hot_dir = hot_run
    want = Classifier.load(hot_dir, device="cpu").predict(TEXTS)
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(hot_dir), "--json", *TEXTS],
                       capture_output=True, text=True, env=env_with(HF_HUB_OFFLINE="1"), timeout=300)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    predict_file(Classifier.load(hot_dir, device="cpu"), src, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [float(x["predicted_score"]) for x in rows] == pytest.approx([w["score"] for w in want], abs=1e-5)


def test_http_uses_it(hot_run: tuple[Path, Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gptclf.inference.serve.app import create_app

    hot = Classifier.load(hot_run[1], device="cpu")
    want = hot.predict(TEXTS)
    with TestClient(create_app(hot)) as c:
        r = c.post("/v1/classify", json={"texts": TEXTS})
        assert c.get("/v1/model").json()["temperature"] == 2.5
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
    raw = Classifier.load(hot_run[0], device="cpu").predict(TEXTS)
    assert all(g["score"] < w["score"] for g, w in zip(got, raw))


def test_a_bad_temperature_is_refused(hot_run: tuple[Path, Path], tmp_path: Path) -> None:
    d = tmp_path / "bad"
    shutil.copytree(hot_run[0], d)
    cfg = json.loads((d / "config.json").read_text())
    for bad in (0, -1.0, "2", True):
        cfg["temperature"] = bad
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(GptclfError, match="temperature"):
            Classifier.load(d, device="cpu")


def test_a_perfectly_separated_validation_set_keeps_the_raw_scores() -> None:
    """Every validation text right: the NLL keeps falling as T -> 0, so there is no fitted
    temperature to trust; the scores stay as they are (T = 1), not pushed to 0 and 1."""
    from gptclf.training.calibrate import fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    logits = np.zeros((200, 2))
    logits[np.arange(200), y] = rng.uniform(1.0, 4.0, 200)  # the true class always ahead
    assert fit_temperature(logits, y) == 1.0
