"""The chapter's bonus experiments as options: first token, no causal mask, pad to N, averaging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_gpt2_config_only

from gptclf import cli
from gptclf.models.classifier import SequenceClassifier, pool, replace_head
from gptclf.errors import GptclfError
from gptclf.models.gpt2 import GPT2Config, GPT2Model
from gptclf.models.llama import LlamaConfig, LlamaModel
from gptclf.inference.classifier import Classifier
from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training
from gptclf.loading import load_backbone


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


def test_cli_names_of_the_bonus_experiments(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import gptclf.training.recipe

    seen: list[TrainConfig] = []

    def fake_run(cfg: TrainConfig) -> Path:
        seen.append(cfg)
        raise GptclfError("stop here")

    monkeypatch.setattr(gptclf.training.recipe, "run_training", fake_run)
    assert cli.main(["train", "--average-embeddings", "--no-causal-mask", "--context-length", "1024",
                     "--trainable", "lora", "--lora-rank", "8", "--lora-alpha", "32",
                     "--lora-targets", "att.qkv,ff.proj", "--grad-checkpointing"]) == 2
    c = seen[0]
    assert (c.pooling, c.causal_mask, c.context_length, c.trainable) == ("mean", False, 1024, "lora")
    assert c.lora_config().targets == ("att.qkv", "ff.proj") and c.lora_config().alpha == 32
    assert c.grad_checkpointing
    assert cli.main(["train", "--average-embeddings", "--pooling", "first"]) == 2
    assert "--average-embeddings means --pooling mean" in capsys.readouterr().err


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
