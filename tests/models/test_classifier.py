"""The classifier around a backbone: pooling modes, the book's freezing, attention without the causal mask."""

from __future__ import annotations

import pytest
import torch

from gptclf.errors import GptclfError
from gptclf.loading import load_backbone
from gptclf.models.classifier import SequenceClassifier, freeze_for_finetuning, pool, replace_head
from gptclf.models.gpt2 import GPT2Config, GPT2Model
from gptclf.models.llama import LlamaConfig, LlamaModel


def test_pooling_modes() -> None:
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    lengths = torch.tensor([2, 4])
    assert pool(h, lengths, "last").flatten().tolist() == [3, 7]
    assert pool(h, lengths, "last-nonpad").flatten().tolist() == [1, 7]
    assert pool(h, lengths, "mean").flatten().tolist() == [0.5, 5.5]


def test_freezing_matches_the_book() -> None:
    bb = load_backbone("gpt2", init="random")
    m = replace_head(bb.model, 2)
    frozen = freeze_for_finetuning(m, "last_block")
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("trf_blocks") else "")
                 for n, p in m.named_parameters() if p.requires_grad}
    assert frozen == 11 and trainable == {"trf_blocks.11", "final_norm", "out_head"}
    assert freeze_for_finetuning(m, "last_layer") == 12
    assert freeze_for_finetuning(m, "all") == 0 and all(p.requires_grad for p in m.parameters())
    assert freeze_for_finetuning(m, "3") == 9
    with pytest.raises(GptclfError):
        freeze_for_finetuning(m, "13")


def _tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        m = GPT2Model(GPT2Config(vocab_size=100, context_length=32, emb_dim=32, n_heads=4, n_layers=2))
    else:
        m = LlamaModel(LlamaConfig(vocab_size=100, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2,
                                   n_layers=2, hidden_dim=48))
    return replace_head(m, 2).eval()


def test_first_token_pooling() -> None:
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    assert pool(h, torch.tensor([2, 4]), "first").flatten().tolist() == [0, 4]
    # Under the causal mask the first token sees only itself: later tokens change nothing.
    model = SequenceClassifier(_tiny("gpt2"), "first")
    a = model(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    b = model(torch.tensor([[5, 9, 9]]), torch.tensor([3]))
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_no_causal_mask_sees_the_whole_text_but_never_the_pads(arch: str) -> None:
    model = SequenceClassifier(_tiny(arch), "first", causal=False)
    assert all(not b.att.causal for b in model.backbone.trf_blocks)
    with torch.no_grad():
        a = model(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
        b = model(torch.tensor([[5, 9, 9]]), torch.tensor([3]))
        assert (a - b).abs().max() > 1e-4  # the first token now sees later tokens
        # The same text alone, padded by 5, and next to a longer text: the same logits.
        for pooling in ("first", "last-nonpad", "mean"):
            model.pooling = pooling
            alone = model(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
            padded = model(torch.tensor([[5, 6, 7, 1, 1, 1, 1, 1]]), torch.tensor([3]))
            batch = model(torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]]), torch.tensor([3, 5]))
            assert torch.allclose(alone, padded, atol=1e-5) and torch.allclose(alone, batch[:1], atol=1e-5)
        # Without the padding mask the pads would leak in: the mask is what makes it exact.
        model.pooling = "first"
        leaky = model.backbone.out_head(model.backbone.final_norm(
            model.backbone.run_blocks(model.backbone.embed(torch.tensor([[5, 6, 7, 1, 1, 1, 1, 1]])))[:, 0]))
        assert (leaky - alone).abs().max() > 1e-4
