"""GPT-2 from scratch: parity with transformers on the same weights, presets, loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gptclf
from gptclf.errors import GptclfError
from gptclf.models.gpt2 import PRESETS, GPT2Config, GPT2Model
from gptclf.loading import load_backbone

from helpers import tiny_gpt2_dir


def _hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf(ids).logits


@pytest.mark.parametrize("tie", [True, False])
def test_parity_with_transformers(tmp_path: Path, tie: bool) -> None:
    d = tiny_gpt2_dir(tmp_path / "m", n_embd=48, n_layer=3, n_head=4, tie=tie)
    ids = torch.randint(0, 50257, (3, 17), generator=torch.Generator().manual_seed(1))
    ours = gptclf.load_model(str(d)).eval()
    with torch.no_grad():
        got = ours(ids)
    want = _hf_logits(d, ids)
    assert got.shape == (3, 17, 50257)
    assert (got - want).abs().max().item() < 1e-4


def test_presets_have_the_published_sizes() -> None:
    # Parameter counts of the OpenAI checkpoints (tied head counted once).
    expected = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168}
    for name, n in expected.items():
        cfg = PRESETS[name]
        with torch.device("meta"):
            m = GPT2Model(GPT2Config(**{k: v for k, v in cfg.to_dict().items() if k != "arch"}))
        assert sum(p.numel() for p in m.parameters()) == n
    assert PRESETS["gpt2-xl"].n_layers == 48 and PRESETS["gpt2-large"].emb_dim == 1280


def test_random_init_needs_no_download() -> None:
    bb = load_backbone("gpt2", init="random")
    assert bb.model.config.n_layers == 12 and bb.source["init"] == "random"


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(GptclfError, match="unknown model 'gpt5-tiny'") as e:
        load_backbone("gpt5-tiny")
    assert "gpt2-small" in e.value.hint


def test_offline_without_cache_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(GptclfError) as e:
        load_backbone("gpt2-small")
    assert "openai-community/gpt2" in e.value.message
    assert "--init random" in e.value.hint and "smollm2" in e.value.hint


def test_hub_download_is_read_from_the_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository already in the Hugging Face cache loads offline (what a resumed download leaves)."""
    from huggingface_hub import constants

    src = tiny_gpt2_dir(tmp_path / "src")
    cache = tmp_path / "hub"
    repo = cache / "models--openai-community--gpt2"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snap / f).write_bytes((src / f).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    bb = load_backbone("gpt2-small")
    assert bb.model.config.emb_dim == 64 and bb.source["hub"] == "openai-community/gpt2"


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    d = tiny_gpt2_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="do not match the architecture"):
        load_backbone(str(d))


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    d = tiny_gpt2_dir(tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(GptclfError, match="not a valid safetensors file"):
        load_backbone(str(d))


def test_pickle_checkpoints_are_never_loaded(tmp_path: Path) -> None:
    d = tiny_gpt2_dir(tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(GptclfError, match="no model.safetensors"):
        load_backbone(str(d))
