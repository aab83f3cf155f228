"""The bonus experiments in training: the trunk cache without the causal mask, padding to N, a book row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training
from gptclf.loading import load_backbone

from helpers import write_gpt2_config_only


def test_trunk_cache_stays_exact_without_the_causal_mask(tmp_path: Path, small_sms: Path,
                                                         tiny_gpt2_config: Path) -> None:
    tiny = tiny_gpt2_config
    runs = {}
    for cache in ("ram", "off"):
        out = run_training(TrainConfig(model=str(tiny), init="random", data=str(small_sms), causal_mask=False,
                                       cache=cache, epochs=1, eval_freq=100, lr=1e-3, progress=False,
                                       out=str(tmp_path / cache)), log=lambda s: None)
        runs[cache] = json.loads((out / "metrics.json").read_text())
    assert runs["ram"]["trunk_cache"] == "ram" and runs["off"]["trunk_cache"] == "off"
    assert runs["ram"]["test_accuracy"] == runs["off"]["test_accuracy"]
    assert runs["ram"]["test_loss"] == pytest.approx(runs["off"]["test_loss"], abs=1e-5)
    cfg = json.loads((tmp_path / "ram" / "config.json").read_text())
    assert cfg["causal_mask"] is False
    clf = Classifier.load(tmp_path / "ram")
    assert not clf.model.causal and not clf.model.backbone.trf_blocks[0].att.causal


def test_context_length_pads_every_text_to_n() -> None:
    c = TrainConfig(context_length=1024).resolved()
    assert (c.padding, c.max_length) == ("longest", 1024)
    with pytest.raises(GptclfError, match="context-length"):
        TrainConfig(context_length=256, padding="dynamic").resolved()
    with pytest.raises(GptclfError, match="context-length"):
        TrainConfig(context_length=256, max_length=120).resolved()


def test_a_book_row_runs_end_to_end(tmp_path: Path, small_sms: Path) -> None:
    """Row 2 of the chapter's table (first token) with row 11's padding, on a tiny model."""
    tiny = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_positions=128)
    out = run_training(TrainConfig(model=str(tiny), init="random", data=str(small_sms), pooling="first",
                                   context_length=128, epochs=1, eval_freq=100, progress=False,
                                   out=str(tmp_path / "r")), log=lambda s: None)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pooling"], cfg["padding"], cfg["max_length"]) == ("first", "longest", 128)
    assert Classifier.load(out).pad_to == 128
    bb = load_backbone(str(tiny), "random")
    assert bb.model.config.context_length == 128
