"""Batches: the chapter's padding (:func:`collate`) and the order texts are drawn in."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (a batch width; see device.pad_multiple)."""
    return -(-n // multiple) * multiple


def collate(ids: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None, multiple: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch with ``pad_id``: to ``pad_to`` (the book) or to its own longest text,
    rounded up to a multiple of ``multiple`` (fewer distinct shapes on a GPU)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    width = pad_to if pad_to is not None else round_up(int(lengths.max()), multiple)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out, lengths


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True,
                     lengths: np.ndarray | None = None, group_size: int = 0) -> list[list[int]]:
    """One epoch of batch indices: a seeded shuffle, as ``DataLoader(shuffle=True)`` gives.

    With ``lengths`` and ``group_size`` > 0, each run of ``group_size`` batches of the
    shuffled order is sorted by length before it is cut into batches, and the batches are
    shuffled again: each batch holds texts of similar length, so dynamic padding wastes
    little, while the groups stay small enough that batches still mix classes.
    """
    perm = torch.randperm(n, generator=generator).tolist()
    if drop_last:
        perm = perm[: n - n % batch_size]
    if lengths is None or group_size <= 1:
        return [perm[i: i + batch_size] for i in range(0, len(perm), batch_size)]
    chunk = batch_size * group_size
    batches: list[list[int]] = []
    for s in range(0, len(perm), chunk):
        group = sorted(perm[s: s + chunk], key=lambda i: lengths[i])
        batches += [group[i: i + batch_size] for i in range(0, len(group), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Evaluation batches over every example, longest first (least padding, no shuffling).

    With ``max_tokens``, a batch also closes before its padded size (rows x its longest
    text) would pass that many tokens; a batch always takes at least one text. Long texts
    then go a few at a time: the longest 32 SMS texts range from ~250 tokens down to ~80,
    so one batch of 32 padded to 250 is mostly padding, and attention grows with the
    square of the width.
    """
    order = np.argsort(-lengths, kind="stable").tolist()
    if not max_tokens:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    rows = max(1, batch_size)
    for i in order:
        # Longest first: a batch's width is the length of its first text.
        if batches and len(batches[-1]) < rows and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def budget_batches(lengths: np.ndarray, min_rows: int, tokens: int,
                   width_of: Callable[[int], int] | None = None) -> list[list[int]]:
    """Like :func:`sorted_batches`, longest first, but each batch holds ``tokens`` padded tokens
    (at least ``min_rows`` texts): big batches of short texts, smaller ones of long texts.
    ``width_of`` gives a batch's padded width from its longest text (default: that length)."""
    order = np.argsort(-lengths, kind="stable").tolist()
    batches, i = [], 0
    while i < len(order):
        longest = int(lengths[order[i]])
        width = width_of(longest) if width_of is not None else longest
        rows = max(min_rows, tokens // max(width, 1))
        batches.append(order[i: i + rows])
        i += rows
    return batches
