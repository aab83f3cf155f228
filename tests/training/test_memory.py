"""GPT-2 sizes, the memory estimate, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from gptclf.models.classifier import SequenceClassifier, replace_head
from gptclf.peft.lora import LoRAConfig, freeze_for_lora
from gptclf.training.memory import GIB, MemoryEstimate, estimate_for_model, estimate_training_memory, memory_warning
from gptclf.models.gpt2 import GPT2Config, GPT2Model
from gptclf.config import TrainConfig
from gptclf.training.recipe import build_classifier
from gptclf.loading import load_backbone


@pytest.mark.parametrize("name, n_params", [
    ("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_every_gpt2_size_builds_and_runs_through_the_same_code(name: str, n_params: int) -> None:
    # On the meta device: shapes and the whole code path, no memory and no arithmetic.
    with torch.device("meta"):
        bb = load_backbone(name, "random")
        assert sum(p.numel() for p in bb.model.parameters()) == n_params  # OpenAI's published counts
        model, frozen = build_classifier(bb, TrainConfig(model=name, trainable="all").resolved(), 2)
        logits = model(torch.randint(0, 50257, (2, 7)), torch.tensor([7, 3]))
    assert frozen == 0 and logits.shape == (2, 2)
    est = estimate_for_model(model.backbone, frozen, batch_size=8, seq_len=120)
    # The vocabulary head is swapped for Linear(emb_dim, 2): n_params - tied head + new head.
    emb = model.config.emb_dim
    assert est.parameters == 4 * (n_params + 2 * emb + 2)
    assert est.gradients == est.parameters and est.optimizer == 2 * est.parameters


def test_estimate_matches_hand_computed_numbers() -> None:
    est = estimate_training_memory(n_parameters=1000, n_trainable=100, n_layers=4, first_trained_block=2,
                                   emb_dim=8, n_heads=2, fc_out=32, proj_in=32, batch_size=2, seq_len=5,
                                   cache_tokens=50)
    # per token: 8*8 + 32 + 32 + 2 heads * 5 positions = 138 values; 10 tokens; 2 blocks backward.
    assert (est.parameters, est.gradients, est.optimizer) == (4000, 400, 800)
    assert est.activations == 4 * 138 * 10 * 2
    assert est.trunk_cache == 4 * 50 * 8
    assert est.total == 4000 + 400 + 800 + 11040 + 1600
    ckpt = estimate_training_memory(1000, 100, 4, 2, 8, 2, 32, 32, 2, 5, grad_checkpointing=True)
    # Checkpointing keeps each block's input (8 values a token) plus one block recomputed.
    assert ckpt.activations == 4 * (2 * 8 * 10 + 138 * 10)
    head_only = estimate_training_memory(1000, 100, 4, 4, 8, 2, 32, 32, 2, 5)
    assert head_only.activations == 0


def test_memory_warning_when_the_estimate_does_not_fit() -> None:
    est = MemoryEstimate(parameters=GIB, gradients=GIB, optimizer=2 * GIB, activations=GIB, trunk_cache=0)
    assert memory_warning(est, 100 * GIB, "available RAM") is None
    msg = memory_warning(est, 4 * GIB, "available RAM")
    assert msg and "5.0 GiB" in msg and "--grad-checkpointing" in msg
    assert "5.00 GiB" in est.describe() and "AdamW states 2.00" in est.describe()


def test_lora_needs_far_less_optimizer_memory_than_full_fine_tuning() -> None:
    with torch.device("meta"):
        full = GPT2Model(GPT2Config(emb_dim=1024, n_layers=24, n_heads=16))
        lora = GPT2Model(GPT2Config(emb_dim=1024, n_layers=24, n_heads=16))
        replace_head(full, 2)
        replace_head(lora, 2)
        freeze_for_lora(lora, LoRAConfig())
    a = estimate_for_model(full, 0, 8, 120)
    b = estimate_for_model(lora, 0, 8, 120)
    assert b.optimizer < a.optimizer / 50 and b.activations == a.activations


@pytest.mark.parametrize("lora_dropout", [None, 0.1])
def test_gradient_checkpointing_gives_the_same_gradients(lora_dropout: float | None) -> None:
    cfg = GPT2Config(vocab_size=100, context_length=32, emb_dim=32, n_heads=4, n_layers=3)
    torch.manual_seed(0)
    a = GPT2Model(cfg)
    replace_head(a, 2)
    b = GPT2Model(cfg)
    replace_head(b, 2)
    b.load_state_dict(a.state_dict())
    if lora_dropout is not None:
        for m in (a, b):
            torch.manual_seed(1)
            freeze_for_lora(m, LoRAConfig(rank=4, dropout=lora_dropout))
            for mod in m.modules():
                if hasattr(mod, "lora_B"):
                    torch.nn.init.normal_(mod.lora_B, std=0.1)
    plain = SequenceClassifier(a).train()
    ckpt = SequenceClassifier(b, grad_checkpointing=True).train()
    ids = torch.randint(0, 100, (4, 11), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([11, 5, 8, 2])
    y = torch.tensor([0, 1, 1, 0])
    for model in (plain, ckpt):
        torch.manual_seed(3)  # same dropout masks in both runs
        torch.nn.functional.cross_entropy(model(ids, lengths), y).backward()
    grads_a = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    grads_b = {n: p.grad for n, p in ckpt.named_parameters() if p.requires_grad}
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-7, rtol=0), n


def test_training_logs_the_estimate_and_warns_when_it_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import gptclf.training.recipe
    from gptclf.config import TrainConfig
    from gptclf.training.recipe import _log_memory_estimate

    cfg = GPT2Config(vocab_size=100, context_length=32, emb_dim=32, n_heads=4, n_layers=3)
    model = SequenceClassifier(replace_head(GPT2Model(cfg), 2))
    lines: list[str] = []
    monkeypatch.setattr(gptclf.training.recipe, "available_memory", lambda device: (10**12, "available RAM"))
    _log_memory_estimate(model, TrainConfig(cache="off"), 0, 32, (), None, torch.device("cpu"), lines.append)
    assert len(lines) == 1 and lines[0].startswith("memory estimate:")
    monkeypatch.setattr(gptclf.training.recipe, "available_memory", lambda device: (1000, "available RAM"))
    _log_memory_estimate(model, TrainConfig(cache="off"), 0, 32, (), None, torch.device("cpu"), lines.append)
    assert lines[-1].startswith("warning: the run needs about") and "available RAM" in lines[-1]
