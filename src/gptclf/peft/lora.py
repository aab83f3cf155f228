"""LoRA (the book's appendix E): train small low-rank updates instead of the weights.

A LoRA layer keeps a frozen linear layer ``W`` and adds ``B @ A`` scaled by
``alpha / rank``::

    y = x W^T + b + dropout(x) A^T B^T * (alpha / rank)

``A`` ([rank, in]) starts random (Kaiming-uniform, as the book and PEFT), ``B`` ([out, rank])
starts at zero, so before the first step the model *is* the base model. Only ``A`` and
``B`` of every targeted layer train, plus the new class head and the final norm (both
small; the head is new, so it cannot be a low-rank update of anything, and the final norm
is what chapter 6 trains along with the head).

Targets are named relative to a block: GPT-2 and the Llama family share the module names
``att.qkv``, ``att.out_proj``, ``ff.fc`` and ``ff.proj``. In gptclf both fuse query, key
and value into one ``qkv`` matrix (and Llama's gate and up into one ``fc``), so a LoRA on
``att.qkv`` is one rank-``r`` update of the fused matrix rather than three separate ones.

A LoRA run saves only what trained (:func:`trained_state_dict`: adapters, head, final
norm); loading applies the adapters to the rebuilt base and merges them into its weights
(:func:`merge_lora`: ``W + B @ A * alpha / rank``), so inference costs exactly what the
base model costs. This module is the LoRA mechanics only and imports nothing of run
directories: saving, naming the base and loading are :mod:`gptclf.rundir.weights`, and
``gptclf export --merge`` writes a self-contained directory (:mod:`gptclf.rundir.export`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import GptclfError
from ..models.classifier import head_parameters

__all__ = ["LoRAConfig", "LoRALinear", "apply_lora", "freeze_for_lora", "merge_lora", "trained_state_dict"]

DEFAULT_TARGETS = ("att.qkv", "att.out_proj", "ff.fc", "ff.proj")


@dataclass
class LoRAConfig:
    """``--lora-rank 16 --lora-alpha 16`` are the book's appendix-E values."""

    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise GptclfError(f"--lora-rank must be at least 1, not {self.rank}")
        if not self.alpha > 0:
            raise GptclfError(f"--lora-alpha must be positive, not {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise GptclfError(f"--lora-dropout must be in [0, 1), not {self.dropout}")
        if not self.targets:
            raise GptclfError("--lora-targets is empty", hint=f"default: {','.join(DEFAULT_TARGETS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoRAConfig:
        return cls(rank=int(d["rank"]), alpha=float(d["alpha"]), targets=tuple(d["targets"]),
                   dropout=float(d.get("dropout", 0.0)))


def parse_targets(spec: str | Any) -> tuple[str, ...]:
    """``"att.qkv,ff.fc"`` -> ``("att.qkv", "ff.fc")``; ``"all"`` or ``None`` -> the default set."""
    if spec is None or spec == "all":
        return DEFAULT_TARGETS
    if isinstance(spec, str):
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    return tuple(spec)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    The base weight and bias are kept under their original names (``weight``, ``bias``),
    so a LoRA model's state dict has the base model's keys plus ``lora_A`` / ``lora_B``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        # Same initialisation as nn.Linear's weight (the book's choice for A).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        update = nn.functional.linear(nn.functional.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + B @ A * alpha / rank``."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def valid_targets(model: nn.Module) -> list[str]:
    """Names (relative to a block) of every linear layer in the first block."""
    return sorted(n for n, m in model.trf_blocks[0].named_modules()
                  if isinstance(m, (nn.Linear, LoRALinear)))


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Replace the targeted linear layers of every block by :class:`LoRALinear`.

    Returns the number of layers wrapped. Unknown target names fail with the list of
    valid ones.
    """
    valid = valid_targets(model)
    unknown = [t for t in cfg.targets if t not in valid]
    if unknown:
        raise GptclfError(f"--lora-targets: {', '.join(unknown)} is not a linear layer of this model's blocks",
                          hint=f"valid targets: {', '.join(valid)} (default: {','.join(DEFAULT_TARGETS)})")
    n = 0
    for block in model.trf_blocks:
        for name in cfg.targets:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            layer = getattr(parent, child)
            if isinstance(layer, LoRALinear):
                continue
            setattr(parent, child, LoRALinear(layer, cfg.rank, cfg.alpha, cfg.dropout))
            n += 1
    return n


def freeze_for_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """``--trainable lora``: freeze everything, add adapters, train them + final norm + head.

    Returns the index of the first block that has something trainable (0 with the default
    targets, which reach every block), i.e. how many leading blocks are frozen and fixed.
    """
    for p in model.parameters():
        p.requires_grad = False
    apply_lora(model, cfg)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_A.requires_grad = True
            m.lora_B.requires_grad = True
    for p in model.final_norm.parameters():
        p.requires_grad = True
    for p in head_parameters(model):
        p.requires_grad = True
    return first_trainable_block(model)


def first_trainable_block(model: nn.Module) -> int:
    """Index of the first block with a trainable parameter (``n_layers`` if none)."""
    for i, block in enumerate(model.trf_blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(model.trf_blocks)


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight (in place); returns how many were merged."""
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                n += 1
    return n


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run saves: the tensors that trained (adapters, final norm, head)."""
    backbone = getattr(model, "backbone", model)
    return {k: p.detach().to("cpu").contiguous() for k, p in backbone.named_parameters()
            if p.requires_grad}
