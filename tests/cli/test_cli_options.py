"""CLI options: the bonus experiments' option names map onto TrainConfig; contradictions are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf import cli
from gptclf.config import TrainConfig
from gptclf.errors import GptclfError


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
