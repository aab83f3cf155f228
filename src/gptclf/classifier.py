"""The chapter's model steps: swap the head, freeze, pool the last token.

:class:`SequenceClassifier` wraps any backbone (GPT-2, Llama) after
:func:`replace_head` and reads one position per text (:func:`pool`). It can also run in
two halves, ``trunk`` (embeddings + the frozen blocks) and ``tail`` (the trainable
blocks, final norm and head), which is what the frozen-trunk cache in
:mod:`gptclf.train` uses.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import GptclfError

POOLINGS = ("last", "last-nonpad", "mean")
TRAINABLE_CHOICES = ("last_layer", "last_block", "last_two_blocks", "all")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the vocabulary head for ``Linear(emb_dim, num_classes)`` (with bias, as the book)."""
    model.out_head = nn.Linear(model.config.emb_dim, num_classes)
    return model


def parse_trainable(trainable: str | int, n_layers: int) -> int:
    """How many of the last transformer blocks train (0 = only the head, as 'last_layer')."""
    named = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2, "all": n_layers}
    if isinstance(trainable, str) and trainable in named:
        return named[trainable]
    try:
        n = int(trainable)
    except (TypeError, ValueError):
        raise GptclfError(f"--trainable {trainable!r} is not valid",
                          hint=f"use one of {', '.join(TRAINABLE_CHOICES)} or a number of last blocks") from None
    if not 0 <= n <= n_layers:
        raise GptclfError(f"--trainable {n}: the model has {n_layers} blocks")
    return n


def freeze_for_finetuning(model: nn.Module, trainable: str | int) -> int:
    """Freeze everything, then unfreeze the last N blocks, the final norm and the head.

    The book's choice ('last_block') trains the last block + final LayerNorm + head.
    'last_layer' trains only the head. Returns the index of the first trainable block
    (``n_layers`` when no block trains), i.e. how many leading blocks are frozen.
    """
    n_layers = model.config.n_layers
    n = parse_trainable(trainable, n_layers)
    for p in model.parameters():
        p.requires_grad = False
    for block in model.trf_blocks[n_layers - n:]:
        for p in block.parameters():
            p.requires_grad = True
    if n == n_layers:
        for p in model.parameters():
            p.requires_grad = True
    if n > 0:
        for p in model.final_norm.parameters():
            p.requires_grad = True
    for p in model.out_head.parameters():
        p.requires_grad = True
    return n_layers - n


def pool(hidden: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from ``hidden`` [batch, seq, dim].

    * ``last``: position -1, the book's ``[:, -1, :]`` (a pad token when right-padded);
    * ``last-nonpad``: each row's last real token;
    * ``mean``: the mean over real tokens.
    """
    if mode == "last":
        return hidden[:, -1]
    if mode == "last-nonpad":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if mode == "mean":
        mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None])
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / lengths.clamp(min=1).to(hidden.dtype)[:, None]
    raise GptclfError(f"unknown pooling {mode!r}", hint=f"use one of {', '.join(POOLINGS)}")


class SequenceClassifier(nn.Module):
    """A backbone with its head swapped: ``forward(ids, lengths) -> logits [batch, classes]``."""

    def __init__(self, backbone: nn.Module, pooling: str = "last-nonpad") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise GptclfError(f"unknown pooling {pooling!r}", hint=f"use one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.pooling = pooling

    @property
    def config(self):
        return self.backbone.config

    def trunk(self, input_ids: torch.Tensor, end: int) -> torch.Tensor:
        """Hidden states entering block ``end`` (embeddings + blocks ``0 .. end-1``)."""
        return self.backbone.run_blocks(self.backbone.embed(input_ids), 0, end)

    def tail(self, hidden: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start ..``, then pool, final norm and head.

        Pooling before the norm and head is exact (both act per position) and saves
        running them on every position.
        """
        h = self.backbone.run_blocks(hidden, start, None)
        if self.pooling == "mean":
            h = self.backbone.final_norm(h)
            return self.backbone.out_head(pool(h, lengths, "mean"))
        return self.backbone.out_head(self.backbone.final_norm(pool(h, lengths, self.pooling)))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.tail(self.backbone.embed(input_ids), lengths, 0)


def calc_loss_batch(model: SequenceClassifier, input_ids: torch.Tensor, lengths: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the pooled (last-token) logits: the book's ``calc_loss_batch``."""
    return nn.functional.cross_entropy(model(input_ids, lengths), targets)
