"""Gemma 2 and Gemma 3 (text) against transformers on the same tiny random weights:
sqrt(width) embedding scale, (1 + w) RMSNorm in fp32, GeGLU (tanh), pre- and post-norms,
attention and final soft-capping (Gemma 2), per-head q/k norms and two RoPE bases over a
local/global layer pattern (Gemma 3), query_pre_attn_scalar."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gptclf import loading

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llama_like_families import VOCAB, write_tiny_tokenizer  # noqa: E402

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-6,
              eos_token_id=0, bos_token_id=0, pad_token_id=0)

CASES = {
    # Soft caps low enough to bite on random weights; window shorter than the input.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(num_hidden_layers=3, sliding_window=5, query_pre_attn_scalar=20,
                    attn_logit_softcapping=1.5, final_logit_softcapping=2.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_hidden_layers=4, sliding_window=5, query_pre_attn_scalar=20,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


def make_hf(directory: Path, name: str):
    cfg_cls, model_cls, extra = CASES[name]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**COMMON, **extra)).eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "norm" in pname:
                p.uniform_(-0.5, 0.5)  # Gemma's norms scale by 1 + w
    hf.save_pretrained(directory)
    write_tiny_tokenizer(directory)
    return hf


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(tmp_path: Path, name: str) -> None:
    hf = make_hf(tmp_path, name)
    ours = loading.load_model(str(tmp_path)).eval()
    assert ours.config.arch == name
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 2e-4


def test_config_switches(tmp_path: Path) -> None:
    make_hf(tmp_path / "g2", "gemma2")
    make_hf(tmp_path / "g3", "gemma3")
    g2, g3 = loading.load_model(str(tmp_path / "g2")), loading.load_model(str(tmp_path / "g3"))
    assert g2.config.attn_softcap == 1.5 and g2.config.final_softcap == 2.0
    assert [b.att.window for b in g2.trf_blocks] == [5, None, 5]
    assert g3.config.qk_norm and g3.config.rope_local_theta == 1e4 and g3.config.rope_linear_factor == 4.0
    assert g3.trf_blocks[0].att.rope is not g3.trf_blocks[1].att.rope  # two RoPE bases
