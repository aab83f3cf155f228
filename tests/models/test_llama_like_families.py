"""Qwen2, Qwen3, Mistral and Phi-3 against transformers on the same tiny random weights.

Each family is Llama's blocks with switches (q/k/v biases, per-head q/k norms, an
explicit head_dim, sliding-window attention, fused projections, partial rotary); logit
parity on checkpoints saved by transformers is the proof each switch is wired right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptclf import loading
from gptclf.errors import GptclfError
from helpers import LLAMA_VOCAB, write_tiny_tokenizer  # noqa: F401  (re-used by the Gemma and export tests)

transformers = pytest.importorskip("transformers")

VOCAB = LLAMA_VOCAB

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, eos_token_id=0, bos_token_id=0, pad_token_id=0)

# name -> (config class, model class, extra config, arch gptclf should report)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True), "qwen2"),
    "qwen2-sliding": ("Qwen2Config", "Qwen2ForCausalLM",
                      dict(tie_word_embeddings=False, use_sliding_window=True, sliding_window=5,
                           max_window_layers=1), "qwen2"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=True), "qwen3"),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(sliding_window=6, tie_word_embeddings=False), "mistral"),
    "mistral-head-dim": ("MistralConfig", "MistralForCausalLM",
                         dict(head_dim=8, sliding_window=None, tie_word_embeddings=False), "mistral"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=7, tie_word_embeddings=False), "phi3"),
    "phi3-partial-rotary": ("Phi3Config", "Phi3ForCausalLM",
                            dict(partial_rotary_factor=0.5, sliding_window=None, tie_word_embeddings=True),
                            "phi3"),
}


def make_hf(directory: Path, name: str, seed: int = 0):
    """A tiny random checkpoint of a family, saved by transformers (norms and biases randomised
    so every parameter matters)."""
    cfg_cls, model_cls, extra, _ = FAMILIES[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
    hf = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
            elif pname.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    hf.save_pretrained(directory)
    write_tiny_tokenizer(directory)
    return hf


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers(tmp_path, name):
    hf = make_hf(tmp_path, name)
    ours = loading.load_model(str(tmp_path)).eval()
    assert ours.config.arch == FAMILIES[name][3]
    # 23 tokens: longer than every sliding window above, so the window mask is exercised.
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (2, 23, VOCAB)
    assert (got - expected).abs().max().item() < 2e-4


def test_switches_are_read_from_the_config(tmp_path):
    make_hf(tmp_path / "q2", "qwen2")
    make_hf(tmp_path / "q3", "qwen3")
    make_hf(tmp_path / "m", "mistral")
    make_hf(tmp_path / "p", "phi3-partial-rotary")
    make_hf(tmp_path / "qs", "qwen2-sliding")
    q2, q3 = loading.load_model(str(tmp_path / "q2")), loading.load_model(str(tmp_path / "q3"))
    m, p = loading.load_model(str(tmp_path / "m")), loading.load_model(str(tmp_path / "p"))
    qs = loading.load_model(str(tmp_path / "qs"))
    assert q2.config.qkv_bias and q2.trf_blocks[0].att.qkv.bias is not None and q2.config.tie_embeddings
    assert q3.config.qk_norm and q3.config.head_dim == 24 and q3.trf_blocks[0].att.qkv.bias is None
    assert [b.att.window for b in m.trf_blocks] == [6, 6, 6]
    assert [b.att.window for b in qs.trf_blocks] == [None, 5, 5]  # max_window_layers=1
    assert p.config.rotary_dim == 8 and p.config.head_dim == 16


def test_window_longer_than_the_input_changes_nothing(tmp_path):
    """Below the window the sliding mask is the causal mask: the fast path is exact."""
    make_hf(tmp_path, "mistral")
    ours = loading.load_model(str(tmp_path)).eval()
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        short = ours(ids)
        for b in ours.trf_blocks:
            b.att.window = None
        full = ours(ids)
    torch.testing.assert_close(short, full)


def test_unsupported_variants_are_clear_errors(tmp_path):
    import json

    make_hf(tmp_path, "phi3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                              "long_factor": [1.0] * 8, "original_max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="longrope"):
        loading.load_model(str(tmp_path))
    cfg["model_type"] = "gemma7"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="qwen2.*qwen3|supported"):
        loading.load_model(str(tmp_path))
