"""How much memory a fine-tuning run needs, estimated before it starts.

The parts, all in fp32 (4 bytes a value; bf16 autocast keeps fp32 weights and optimizer
states, and its smaller activations only make the estimate an upper bound):

* **parameters**: every weight of the classifier (tied weights once);
* **gradients**: one value per trainable parameter;
* **optimizer**: AdamW's two moment estimates per trainable parameter;
* **activations**: what autograd keeps for the backward pass, per token and per block
  that the backward pass runs through (see :func:`activation_values_per_token`). Blocks
  before the first trainable one keep nothing (no gradient flows into them). With
  gradient checkpointing a block keeps only its input, and one block at a time is
  recomputed in full;
* **trunk cache**: the frozen blocks' output, one ``emb_dim`` vector per token.

It is an estimate for one training step at the longest sequence (dynamic padding makes
most batches shorter), not a measurement; allocator overhead and temporary buffers come
on top, so the warning fires at 90 % of what is available.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..device import available_ram

BYTES = 4  # fp32
GIB = 2**30


@dataclass
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    trunk_cache: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.trunk_cache

    def describe(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients),
                 ("AdamW states", self.optimizer), ("activations", self.activations),
                 ("trunk cache", self.trunk_cache)]
        return (f"memory estimate: {self.total / GIB:.2f} GiB = "
                + " + ".join(f"{name} {b / GIB:.2f}" for name, b in parts))


def activation_values_per_token(emb_dim: int, n_heads: int, seq_len: int, fc_out: int, proj_in: int) -> int:
    """Values one pre-norm transformer block keeps for backward, per token.

    Block input and first norm's output (2 x emb_dim), query/key/value (3 x emb_dim),
    attention output (emb_dim), the residual sum and second norm's output (2 x emb_dim),
    the MLP's first projection's output (``fc_out``: 4 x emb_dim for GPT-2, gate + up for
    Llama) and the input of its last projection (``proj_in``), plus the attention
    probabilities (``n_heads x seq_len``; the fused GPU kernels keep less, so on GPUs this
    is an upper bound).
    """
    return 8 * emb_dim + fc_out + proj_in + n_heads * seq_len


def estimate_training_memory(n_parameters: int, n_trainable: int, n_layers: int, first_trained_block: int,
                             emb_dim: int, n_heads: int, fc_out: int, proj_in: int, batch_size: int,
                             seq_len: int, grad_checkpointing: bool = False, cache_tokens: int = 0
                             ) -> MemoryEstimate:
    """The estimate from plain numbers (see the module docstring for what each part is)."""
    tokens = batch_size * seq_len
    per_block = activation_values_per_token(emb_dim, n_heads, seq_len, fc_out, proj_in) * tokens
    backward_blocks = max(n_layers - first_trained_block, 0) if n_trainable else 0
    if grad_checkpointing and backward_blocks:
        activations = backward_blocks * emb_dim * tokens + per_block
    else:
        activations = backward_blocks * per_block
    return MemoryEstimate(
        parameters=n_parameters * BYTES,
        gradients=n_trainable * BYTES,
        optimizer=2 * n_trainable * BYTES,
        activations=activations * BYTES,
        trunk_cache=cache_tokens * emb_dim * BYTES,
    )


def estimate_for_model(backbone: nn.Module, first_trained_block: int, batch_size: int, seq_len: int,
                       grad_checkpointing: bool = False, cache_tokens: int = 0) -> MemoryEstimate:
    """The estimate for a backbone after the head swap and freezing (any architecture)."""
    params = {id(p): p for p in backbone.parameters()}.values()
    cfg = backbone.config
    ff = backbone.trf_blocks[0].ff
    return estimate_training_memory(
        n_parameters=sum(p.numel() for p in params),
        n_trainable=sum(p.numel() for p in params if p.requires_grad),
        n_layers=cfg.n_layers, first_trained_block=first_trained_block, emb_dim=cfg.emb_dim,
        n_heads=cfg.n_heads, fc_out=ff.fc.out_features, proj_in=ff.proj.in_features,
        batch_size=batch_size, seq_len=seq_len, grad_checkpointing=grad_checkpointing,
        cache_tokens=cache_tokens)


def available_memory(device: torch.device) -> tuple[int, str]:
    """Free bytes where training runs: GPU memory on CUDA, else available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "free GPU memory"
    return available_ram(), "available RAM"


def memory_warning(est: MemoryEstimate, available: int, where: str) -> str | None:
    """A warning line when the estimate exceeds 90 % of ``available`` bytes, else None."""
    if est.total <= 0.9 * available:
        return None
    return (f"warning: the run needs about {est.total / GIB:.1f} GiB, more than the {available / GIB:.1f} GiB "
            f"of {where}: use --grad-checkpointing, --trainable lora, a smaller --batch-size or "
            "--max-length, or a smaller model")
