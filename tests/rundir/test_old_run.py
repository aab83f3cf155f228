"""A run directory written by an earlier gptclf (the flat-package layout, before the
restructuring) still loads and predicts exactly as it did then.

``tests/fixtures/run-0.1.0`` is a tiny Llama-family classifier (HF tokenizer.json, a template,
three labels) trained and saved by that version; ``expected.json`` holds the class
probabilities that version computed for a few texts (one empty, one truncated).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gptclf.inference.classifier import Classifier

from helpers import FIXTURES

OLD_RUN = FIXTURES / "run-0.1.0"


def test_old_run_directory_predicts_what_it_did() -> None:
    expected = json.loads((OLD_RUN / "expected.json").read_text())
    clf = Classifier.load(OLD_RUN, device="cpu")
    assert clf.labels == expected["labels"]
    assert clf.run_config.template == "Topic: {text}" and clf.run_config.extra == {}
    probs = clf.predict_proba(expected["texts"])
    np.testing.assert_allclose(probs, np.array(expected["probabilities"]), rtol=0, atol=1e-6)


def test_old_run_config_round_trips(tmp_path: Path) -> None:
    from gptclf.rundir.load import read_run_config

    raw = json.loads((OLD_RUN / "config.json").read_text())
    assert read_run_config(OLD_RUN).to_json() == raw  # nothing lost, nothing added
