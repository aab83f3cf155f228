"""load_backbone for names and Hugging Face checkpoints (GPT-2 and Llama directories), and its refusals.

Presets with random init, the hub cache offline, a directory's tokenizer and config; unknown
names, mismatched or truncated weights, pickles, shard indexes pointing outside, a missing
tokenizer.json and unsupported RoPE scaling are each one clear GptclfError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptclf import loading as weights
from gptclf.errors import GptclfError
from gptclf.loading import load_backbone
from gptclf.models import registry as models
from gptclf.tokenizers import tokenizer_from_config

from helpers import make_hf_llama, tiny_gpt2_dir, write_gpt2_config_only


# ------------------------------------------------------------------------ names, hub cache


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


# -------------------------------------------------------------------- GPT-2 directories


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


def test_shard_index_cannot_name_files_outside(tmp_path: Path) -> None:
    from gptclf.loading import load_backbone

    d = write_gpt2_config_only(tmp_path / "m")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "../evil.safetensors"}}))
    with pytest.raises(GptclfError, match="names the shard '../evil.safetensors'"):
        load_backbone(str(d))
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(GptclfError, match="model.safetensors.index.json is not valid JSON"):
        load_backbone(str(d))
    (d / "config.json").write_text("[1, 2")
    with pytest.raises(GptclfError, match="is not valid JSON"):
        load_backbone(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    with pytest.raises(GptclfError, match="lacks 'vocab_size'"):
        load_backbone(str(d), init="random")


# -------------------------------------------------------------------- Llama directories


def test_hf_dir_tokenizer_and_config_roundtrip(tmp_path):
    make_hf_llama(tmp_path / "m", tie=False, n_heads=4, n_kv_heads=2)
    bb = weights.load_backbone(str(tmp_path / "m"))
    tok = bb.tokenizer
    assert tok.pad_id == 0  # no pad_token_id in config.json: falls back to eos
    text = "héllo <|endoftext|> wörld"
    assert tok.encode(text, allow_special=True).count(0) == 1
    assert 0 not in tok.encode(text)  # special tokens in user text stay plain text
    assert tok.decode(tok.encode(text)) == text

    out = tmp_path / "saved"
    tok.save(out)
    again = tokenizer_from_config(json.loads(json.dumps(tok.to_config())), out)
    assert again.encode(text) == tok.encode(text)
    assert again.pad_id == tok.pad_id

    cfg = models.config_from_dict(json.loads(json.dumps(bb.model.config.to_dict())))
    assert cfg == bb.model.config
    rebuilt = models.build_model(cfg)
    rebuilt.load_state_dict(bb.model.state_dict())


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
    make_hf_llama(tmp_path, tie=True, n_heads=4, n_kv_heads=2)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(GptclfError, match="tokenizer.json"):
        weights.load_model(str(tmp_path))


def test_unsupported_rope_scaling_is_a_clear_error(tmp_path):
    make_hf_llama(tmp_path, tie=True, n_heads=4, n_kv_heads=2)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    cfg.pop("rope_scaling", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="yarn"):
        weights.load_model(str(tmp_path))
