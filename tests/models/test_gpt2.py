"""GPT-2 from scratch: parity with transformers on the same weights, and the presets' sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gptclf
from gptclf.models.gpt2 import PRESETS, GPT2Config, GPT2Model

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
