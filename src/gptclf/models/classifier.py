"""The chapter's model steps: swap the head, freeze, pool the last token.

:class:`SequenceClassifier` wraps any backbone (GPT-2, Llama) after
:func:`replace_head` and reads one position per text (:func:`pool`). It can also run in
two halves, ``trunk`` (embeddings + the frozen blocks) and ``tail`` (the trainable
blocks, final norm and head), which is what the frozen-trunk cache in
:mod:`gptclf.training.trunk_cache` uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import GptclfError

POOLINGS = ("last", "last-nonpad", "mean", "first")
TRAINABLE_CHOICES = ("last_layer", "last_block", "last_two_blocks", "all", "lora")


class WindowPool(nn.Module):
    """``--long-text chunk``: one vector per text from its windows' pooled vectors.

    ``attention`` weighs each window by ``softmax(v @ query)`` over the text's windows (the
    query starts at zero, i.e. as the mean, and trains with the head); ``max`` takes each
    feature's largest value, ``mean`` the average. A text of one window gets that window's
    vector exactly in all three, so short texts classify as a truncating run would.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, vectors: torch.Tensor, counts: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
        """``vectors`` [windows, dim], the windows of text ``i`` consecutive and ``counts[i]`` of
        them -> [texts, dim]. ``owner`` (each window's text), when given, saves computing it from
        ``counts``: a step on static shapes passes it, since ``repeat_interleave`` with a tensor
        of counts has a data-dependent size, which a CUDA graph cannot hold."""
        if owner is None:
            owner = torch.repeat_interleave(torch.arange(len(counts), device=vectors.device),
                                            counts.to(vectors.device))
        out = vectors.new_zeros((len(counts), vectors.shape[1]))
        if self.mode == "max":
            return out.scatter_reduce(0, owner[:, None].expand_as(vectors), vectors, "amax", include_self=False)
        if self.mode == "mean":
            return out.index_add(0, owner, vectors) / counts.to(vectors)[:, None]
        score = vectors.float() @ self.query.float()
        top = torch.full((len(counts),), float("-inf"), device=vectors.device).scatter_reduce(
            0, owner, score, "amax", include_self=True)
        w = torch.exp(score - top[owner])  # a softmax within each text
        w = w / torch.zeros_like(top).index_add(0, owner, w)[owner]
        return out.index_add(0, owner, vectors * w.to(vectors)[:, None])


def replace_head(model: nn.Module, num_classes: int, bias: bool = True, aggregation: str | None = None) -> nn.Module:
    """Swap the vocabulary head for ``Linear(emb_dim, num_classes)`` (with bias, as the book;
    ``bias=False`` is what Hugging Face's ``*ForSequenceClassification`` heads hold). With
    ``aggregation`` (``--long-text chunk``), also the :class:`WindowPool` in front of it."""
    model.out_head = nn.Linear(model.config.emb_dim, num_classes, bias=bias)
    if aggregation is not None:
        model.window_pool = WindowPool(model.config.emb_dim, aggregation)
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What trains with the head whatever else is frozen: the head and a window pool's query."""
    pool = getattr(model, "window_pool", None)
    return list(model.out_head.parameters()) + (list(pool.parameters()) if pool is not None else [])


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
    for p in head_parameters(model):
        p.requires_grad = True
    return n_layers - n


def pool(hidden: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from ``hidden`` [batch, seq, dim].

    * ``last``: position -1, the book's ``[:, -1, :]`` (a pad token when right-padded);
    * ``last-nonpad``: each row's last real token;
    * ``mean``: the mean over real tokens;
    * ``first``: position 0 (the book's bonus experiment; under the causal mask the first
      token sees only itself, so it classifies from one token's embedding).
    """
    if mode == "last":
        return hidden[:, -1]
    if mode == "first":
        return hidden[:, 0]
    if mode == "last-nonpad":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if mode == "mean":
        mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None])
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / lengths.clamp(min=1).to(hidden.dtype)[:, None]
    raise GptclfError(f"unknown pooling {mode!r}", hint=f"use one of {', '.join(POOLINGS)}")


class SequenceClassifier(nn.Module):
    """A backbone with its head swapped: ``forward(ids, lengths) -> logits [batch, classes]``.

    ``causal=False`` is the book's "no causal mask" experiment: every token sees the whole
    text. Padding is then hidden by a key-padding mask built from ``lengths``, so a text's
    result still does not depend on how much its batch is padded (without it, pads would
    become visible and the dynamic-padding and trunk-cache invariances would break).
    ``grad_checkpointing`` recomputes each block's activations in the backward pass
    instead of storing them (less memory, about one extra forward of compute).
    """

    def __init__(self, backbone: nn.Module, pooling: str = "last-nonpad", causal: bool = True,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise GptclfError(f"unknown pooling {pooling!r}", hint=f"use one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.pooling = pooling
        self.causal = causal
        self.grad_checkpointing = grad_checkpointing
        for block in backbone.trf_blocks:
            block.att.causal = causal

    @property
    def config(self):
        return self.backbone.config

    def attention_mask(self, lengths: torch.Tensor | None, width: int, device: torch.device) -> torch.Tensor | None:
        """``None`` under the causal mask (right padding is never read); else a key-padding mask."""
        if self.causal or lengths is None:
            return None
        keys = torch.arange(width, device=device)[None, :] < lengths.to(device)[:, None]
        return keys[:, None, None, :]  # [batch, 1 (heads), 1 (queries), keys]: True = visible

    def _blocks(self, h: torch.Tensor, start: int, end: int | None, mask: torch.Tensor | None) -> torch.Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return self.backbone.run_blocks(h, start, end, mask)
        for block in self.backbone.trf_blocks[start:end]:
            h = checkpoint(block, h, mask, use_reentrant=False)
        return h

    def trunk(self, input_ids: torch.Tensor, end: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states entering block ``end`` (embeddings + blocks ``0 .. end-1``)."""
        mask = self.attention_mask(lengths, input_ids.shape[1], input_ids.device)
        return self._blocks(self.backbone.embed(input_ids), 0, end, mask)

    def tail(self, hidden: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start ..``, then pool, final norm and head."""
        return self.backbone.out_head(self.vectors(hidden, lengths, start))

    def vectors(self, hidden: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start ..``, then pool and final norm: the vector the head reads.

        Pooling before the norm and head is exact (both act per position) and saves
        running them on every position.
        """
        h = self._blocks(hidden, start, None, self.attention_mask(lengths, hidden.shape[1], hidden.device))
        if self.pooling == "mean":
            return pool(self.backbone.final_norm(h), lengths, "mean")
        return self.backbone.final_norm(pool(h, lengths, self.pooling))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.tail(self.backbone.embed(input_ids), lengths, 0)

    @property
    def chunked(self) -> bool:
        """Whether texts come as windows (``--long-text chunk``): see :meth:`classify_windows`."""
        return getattr(self.backbone, "window_pool", None) is not None

    def classify_windows(self, vectors: torch.Tensor, counts: torch.Tensor,
                         owner: torch.Tensor | None = None) -> torch.Tensor:
        """Logits per text from its windows' :meth:`vectors` (consecutive, ``counts`` a text;
        ``owner``: each window's text, see :class:`WindowPool`)."""
        return self.backbone.out_head(self.backbone.window_pool(vectors, counts, owner))


def calc_loss_batch(model: SequenceClassifier, input_ids: torch.Tensor, lengths: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the pooled (last-token) logits: the book's ``calc_loss_batch``."""
    return nn.functional.cross_entropy(model(input_ids, lengths), targets)
