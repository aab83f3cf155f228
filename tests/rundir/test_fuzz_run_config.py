"""Fuzzing a run directory's config.json: any values load into a working classifier or are a GptclfError."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.errors import GptclfError

from helpers import examples, random_classifier, tiny_gpt2_dir, write_run


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
CONFIG_KEYS = ["architecture", "labels", "max_length", "pooling", "padding", "tokenizer", "format", "num_classes"]
ARCH_KEYS = ["arch", "vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias",
             "layer_norm_eps"]


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random classifier on a config-only GPT-2 of 8 dims, 1 block, a 16-token context."""
    root = tmp_path_factory.mktemp("fuzz")
    arch = tiny_gpt2_dir(root / "arch", weights=False, n_embd=8, n_layer=1, n_head=2, n_positions=16)
    return write_run(root / "run", random_classifier(arch), max_length=16)


@settings(max_examples=examples(150))
@given(edits=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS + [f"architecture.{k}" for k in ARCH_KEYS]),
                                json_values), min_size=1, max_size=3))
def test_hostile_config_json_loads_or_is_a_gptclf_error(fuzz_run: Path, edits) -> None:
    import json
    import shutil

    from gptclf.inference.classifier import Classifier

    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        shutil.copytree(fuzz_run, run)
        cfg = json.loads((run / "config.json").read_text())
        for key, value in edits:
            if key.startswith("architecture.") and isinstance(cfg.get("architecture"), dict):
                cfg["architecture"][key.split(".", 1)[1]] = value
            else:
                cfg[key] = value
        (run / "config.json").write_text(json.dumps(cfg))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                clf = Classifier.load(run, device="cpu")
            except GptclfError as e:
                assert e.message
                return
        # What loads must work: one finite prediction per text.
        out = clf.predict_proba(["hello", "a longer text than the first one"])
        assert out.shape == (2, len(clf.labels))
