"""Inference batches under a token budget (``sorted_batches(..., max_tokens)``): every text
once, longest first, no batch over the budget unless it holds a single text."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data.batching import sorted_batches

from helpers import examples


@settings(max_examples=examples(150))
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=120), batch_size=st.integers(1, 40),
       max_tokens=st.integers(1, 4096))
def test_budget_batches_cover_every_text_once_within_the_budget(lengths, batch_size, max_tokens) -> None:
    lens = np.array(lengths)
    batches = sorted_batches(lens, batch_size, max_tokens)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lens)))
    assert flat == sorted_batches(lens, len(lens))[0]  # the same longest-first order, only cut elsewhere
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len(b) == 1 or len(b) * lens[b].max() <= max_tokens
    # Greedy: a batch closes only because the next text would break the row or token limit.
    for b, nxt in zip(batches, batches[1:]):
        assert len(b) == batch_size or (len(b) + 1) * lens[b[0]] > max_tokens, (b, nxt)


def test_long_texts_go_a_few_at_a_time_and_short_ones_fill_the_batch() -> None:
    lens = np.array([250, 240, 120, 90] + [20] * 60)
    batches = sorted_batches(lens, 32, 512)
    # 2 x 250 (3 x 250 > 512); 120, 90 and two 20s at width 120; then 25 x 20 per batch.
    assert [len(b) for b in batches] == [2, 4, 25, 25, 8]
    assert [len(b) for b in sorted_batches(lens, 32)] == [32, 32]  # no budget: 32 padded to 250 first
