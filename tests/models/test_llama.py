"""The from-scratch Llama against transformers' LlamaForCausalLM on the same weights.

Parity is the proof that the weights load right: q/k/v and gate/up fusion, GQA head
grouping, the rotary layout, RMSNorm and the tied/untied head all have to agree.
"""

from __future__ import annotations

import pytest
import torch

from gptclf import loading as weights
from gptclf.models import registry as models

from helpers import LLAMA_VOCAB as VOCAB
from helpers import make_hf_llama

pytest.importorskip("transformers")


@pytest.mark.parametrize("tie,n_heads,n_kv_heads", [
    (True, 4, 2),    # tied head, grouped-query attention (SmolLM2's shape)
    (False, 4, 4),   # untied head, plain multi-head attention
    (False, 4, 1),   # multi-query attention
])
def test_logits_match_transformers(tmp_path, tie, n_heads, n_kv_heads):
    hf = make_hf_llama(tmp_path, tie=tie, n_heads=n_heads, n_kv_heads=n_kv_heads)
    ours = weights.load_model(str(tmp_path)).eval()
    assert ours.config.arch == "llama"
    assert ours.config.tie_embeddings is tie
    assert (ours.out_head.weight is ours.tok_emb.weight) is tie

    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (2, 17, VOCAB)
    assert (got - expected).abs().max().item() < 1e-4


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    hf = make_hf_llama(tmp_path, tie=True, n_heads=4, n_kv_heads=2, rope_scaling=scaling)
    ours = weights.load_model(str(tmp_path)).eval()
    assert ours.config.rope_scaling["factor"] == 8.0
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_backbone_interface(tmp_path):
    make_hf_llama(tmp_path, tie=True, n_heads=4, n_kv_heads=2)
    model = weights.load_model(str(tmp_path)).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        h = model.embed(ids)
        split = model.run_blocks(model.run_blocks(h, 0, 1), 1)
        whole = model.run_blocks(h)
        assert torch.equal(split, whole)
        assert torch.allclose(model.out_head(model.final_norm(whole)), model(ids))
        # An explicit causal mask (what the classifier passes to hide padding) changes nothing.
        causal = torch.ones(9, 9, dtype=torch.bool).tril()
        assert torch.allclose(model.run_blocks(h, attn_mask=causal), whole, atol=1e-5)
    assert all(block.att.causal for block in model.trf_blocks)
    assert isinstance(model.trf_blocks, torch.nn.ModuleList)


def test_presets_build_and_count():
    from gptclf.models.llama import PRESETS

    cfg = PRESETS["smollm2-135m"]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = models.build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 134e6 < n < 135e6  # SmolLM2-135M: 134,515,008 parameters with the tied head
    assert model.trf_blocks[0].att.qkv.weight.shape == (576 + 2 * 192, 576)


def test_random_init_trains(tmp_path):
    """Gradients reach every parameter (fused projections split correctly in backward too)."""
    from gptclf.models.llama import LlamaConfig

    model = models.build_model(LlamaConfig(vocab_size=50, context_length=32, emb_dim=32, n_heads=4,
                                           n_kv_heads=2, n_layers=2, hidden_dim=48))
    ids = torch.randint(0, 50, (2, 8))
    model(ids)[:, -1].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
