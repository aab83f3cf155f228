"""Property tests of tokenize, pad and batch: every text, token and row is kept, in order."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data.batching import collate, shuffled_batches, sorted_batches
from gptclf.data.encoding import encode_examples
from gptclf.errors import DataWarning
from gptclf.tokenizers.gpt2 import GPT2Tokenizer

from helpers import any_text, examples


@settings(max_examples=examples(60))
@given(texts=st.lists(any_text, min_size=1, max_size=20), max_length=st.one_of(st.none(), st.integers(1, 40)))
def test_encode_gives_one_row_per_text_and_counts_truncation(texts, max_length) -> None:
    tok = GPT2Tokenizer()
    raw = tok.encode_batch(texts)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = encode_examples(tok, texts, list(range(len(texts))), max_length, context_length=32)
    assert len(ds) == len(texts) and ds.labels.tolist() == list(range(len(texts)))
    limit = min(max_length or max(max(len(r) for r in raw), 1), 32)
    assert ds.max_length == limit
    for r, ids in zip(raw, ds.ids):
        assert 1 <= len(ids) <= limit
        assert ids == (r[:limit] if r else [tok.pad_id])
    n_long = sum(len(r) > limit for r in raw)
    msgs = [str(x.message) for x in w if issubclass(x.category, DataWarning)]
    if n_long:
        assert any(f"{n_long} text(s) longer than {limit} tokens were truncated" in m for m in msgs), msgs
    else:
        assert not any("truncated" in m for m in msgs)


ids_lists = st.lists(st.lists(st.integers(0, 50256), min_size=1, max_size=12), min_size=1, max_size=30)


@settings(max_examples=examples(100))
@given(ids=ids_lists, pad_to_extra=st.one_of(st.none(), st.integers(0, 5)))
def test_collate_keeps_every_token_and_pads_right(ids, pad_to_extra) -> None:
    pad_to = None if pad_to_extra is None else max(map(len, ids)) + pad_to_extra
    batch, lengths = collate(ids, pad_id=50256, pad_to=pad_to)
    assert batch.shape == (len(ids), pad_to or max(map(len, ids)))
    assert lengths.tolist() == [len(x) for x in ids]
    for row, x in zip(batch.tolist(), ids):
        assert row[: len(x)] == x and set(row[len(x):]) <= {50256}


@settings(max_examples=examples(100))
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=80), batch_size=st.integers(1, 16),
       seed=st.integers(0, 2**31 - 1), drop_last=st.booleans(), group=st.integers(0, 5))
def test_batches_cover_every_row_exactly_once(lengths, batch_size, seed, drop_last, group) -> None:
    n, lens = len(lengths), np.array(lengths)
    order = sorted_batches(lens, batch_size)
    flat = [i for b in order for i in b]
    assert sorted(flat) == list(range(n)) and all(1 <= len(b) <= batch_size for b in order)
    assert all(lens[a] >= lens[b] for a, b in zip(flat, flat[1:]))  # longest first
    sb = shuffled_batches(n, batch_size, torch.Generator().manual_seed(seed), drop_last, lens, group)
    flat = [i for b in sb for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(n))
    assert len(flat) == (n - n % batch_size if drop_last else n)
    if drop_last:
        assert all(len(b) == batch_size for b in sb)
    again = shuffled_batches(n, batch_size, torch.Generator().manual_seed(seed), drop_last, lens, group)
    assert again == sb
