"""Loaders build the backbone without drawing random weights (the file fills every one):
the loaded model equals one built with the random initialisation, and torch.nn.init is
left as it was."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import init

from gptclf.loading import load_backbone
from gptclf.models import registry


def test_loaded_weights_do_not_depend_on_the_skipped_init(tiny_gpt2: Path, monkeypatch) -> None:
    normal = init.normal_
    fast = load_backbone(str(tiny_gpt2)).model.state_dict()
    assert init.normal_ is normal  # restored
    build = registry.build_model
    monkeypatch.setattr(registry, "build_model", lambda cfg, initialise=True: build(cfg, True))
    slow = load_backbone(str(tiny_gpt2)).model.state_dict()
    assert fast.keys() == slow.keys()
    for k in fast:
        assert torch.equal(fast[k], slow[k]), k


def test_random_init_still_draws_weights(tiny_gpt2_config: Path) -> None:
    model = load_backbone(str(tiny_gpt2_config), init="random").model
    matrices = [p for p in model.parameters() if p.dim() == 2]
    assert matrices and all(torch.isfinite(p).all() and p.std() > 0 for p in matrices)
