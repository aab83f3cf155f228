"""Loading converted weights into a model, with a clear message when they do not fit."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import GptclfError


def load_converted_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Load with a clear message when names or shapes disagree."""
    tok = getattr(model, "tok_emb", None)
    head = getattr(model, "out_head", None)
    if (tok is not None and head is not None and head.weight is tok.weight
            and "out_head.weight" in sd and not torch.equal(sd["out_head.weight"], sd["tok_emb.weight"])):
        # Checkpoint has an untied head: give the model its own parameter before loading.
        model.out_head.weight = nn.Parameter(torch.empty_like(tok.weight))
    detail = state_dict_problems(model.state_dict(), sd)
    if detail:
        raise GptclfError(f"weights in {where} do not match the architecture: {detail}",
                          hint="the config and the weights come from different models")
    model.load_state_dict(sd, strict=True)


def state_dict_problems(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str:
    """What differs between a model's tensors and a file's: names and shapes ('' if nothing)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
           if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing tensors {missing[:3]}")
    if unexpected:
        parts.append(f"unexpected tensors {unexpected[:3]}")
    if bad:
        parts.append("shape mismatch " + ", ".join(f"{k}: file {a} vs config {b}" for k, a, b in bad[:3]))
    return "; ".join(parts)
