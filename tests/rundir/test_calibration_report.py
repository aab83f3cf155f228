"""A trained run records its temperature, the ECE before/after, the per-epoch validation
curve and the best epoch, and its report shows the reliability diagram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gptclf.inference.classifier import Classifier


def test_run_records_calibration_and_best_epoch(tiny_run: Path) -> None:
    m = json.loads((tiny_run / "metrics.json").read_text())
    cfg = json.loads((tiny_run / "config.json").read_text())
    cal = m["calibration"]
    assert cfg.get("temperature", 1.0) == m["temperature"] == cal["temperature"] > 0  # absent: 1
    for split in ("train", "val", "test"):
        assert 0 <= cal[f"{split}_ece_after"] <= 1 and 0 <= cal[f"{split}_ece_before"] <= 1
    # Fitted to minimise the validation NLL, so never worse than the raw scores there.
    assert cal["val_ece_after"] <= cal["val_ece_before"] + 0.05
    assert sum(b["count"] for b in cal["test_reliability_after"]) == m["n_test"]
    assert [c["epoch"] for c in m["val_curve"]] == [1, 2] and m["best_epoch"] in (1, 2)
    assert (tiny_run / "reliability-diagram.png").stat().st_size > 1000
    page = (tiny_run / "report.html").read_text()
    assert 'alt="reliability diagram"' in page and "test ECE after calibration" in page
    # The saved scores are the calibrated ones: the test loss in metrics.json is what the
    # loaded classifier gets on the same texts.
    clf = Classifier.load(tiny_run, device="cpu")
    assert clf.temperature == m["temperature"]
    assert np.isfinite(m["test_loss"])
