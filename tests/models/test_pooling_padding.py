"""Pooling is by length, never by searching for the pad id: right padding, no padding and a
pad id equal to EOS that also occurs inside (and at the end of) a text all pool the text's
last real token. gptclf pads on the right only (``collate``); a left-padded batch is never
built, and the Hugging Face export pins ``padding_side: right`` for the same reason."""

from __future__ import annotations

import pytest
import torch

from gptclf.data.batching import collate
from gptclf.models import registry
from gptclf.models.classifier import SequenceClassifier, pool, replace_head
from gptclf.models.gpt2 import GPT2Config
from gptclf.models.mistral import MistralConfig
from gptclf.models.qwen2 import Qwen2Config
from gptclf.models.qwen3 import Qwen3Config

EOS = PAD = 0  # the pad id is the EOS id, as for GPT-2 (50256) and most Llama-family runs

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=50, context_length=32, emb_dim=32, n_heads=4, n_layers=2),
    "qwen2": lambda: Qwen2Config(vocab_size=50, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2,
                                 n_layers=2, hidden_dim=48),
    "qwen3": lambda: Qwen3Config(vocab_size=50, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2,
                                 n_layers=2, hidden_dim=48, head_dim=12),
    # A window of 3 tokens: shorter than the texts, so the sliding mask meets the padding.
    "mistral": lambda: MistralConfig(vocab_size=50, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2,
                                     n_layers=2, hidden_dim=48, sliding_window=3),
}

TEXTS = [
    [5, 9, 11, 3, 7, 21],
    [4, EOS, 8, EOS],          # EOS (= pad) inside the text and as its last token
    [EOS],                     # a text that is only EOS
    [13, 2, 2, 40, EOS, 6, 7, 30, 31, 12],
]


def classifier(name: str, pooling: str, causal: bool = True) -> SequenceClassifier:
    torch.manual_seed(0)
    model = replace_head(registry.build_model(CONFIGS[name]()), 3)
    return SequenceClassifier(model, pooling, causal=causal).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("pooling,causal", [("last-nonpad", True), ("mean", True), ("first", True),
                                            ("last-nonpad", False), ("mean", False)])
def test_padded_batch_pools_each_text_as_if_alone(name: str, pooling: str, causal: bool) -> None:
    clf = classifier(name, pooling, causal)
    with torch.no_grad():
        alone = torch.cat([clf(torch.tensor([t]), torch.tensor([len(t)])) for t in TEXTS])  # no padding
        for extra in (0, 7):  # padded to the longest text, then 7 pads more
            ids, lengths = collate(TEXTS, PAD, pad_to=max(map(len, TEXTS)) + extra)
            torch.testing.assert_close(clf(ids, lengths), alone, atol=1e-5, rtol=1e-5)


def test_pad_equal_to_eos_inside_a_text_is_read_as_text() -> None:
    """A search for the 'rightmost non-pad token' would pool position 2 of [4, EOS, 8, EOS];
    pooling by length reads position 3, the text's real last token."""
    hidden = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1)
    ids, lengths = collate([[4, EOS, 8, EOS], [EOS]], PAD, pad_to=6)
    assert ids.tolist() == [[4, EOS, 8, EOS, PAD, PAD], [EOS, PAD, PAD, PAD, PAD, PAD]]
    assert pool(hidden, lengths, "last-nonpad").flatten().tolist() == [3.0, 6.0]
    assert pool(hidden, lengths, "first").flatten().tolist() == [0.0, 6.0]
    assert pool(hidden, lengths, "mean").flatten().tolist() == [1.5, 6.0]


def test_collate_pads_on_the_right_only() -> None:
    ids, lengths = collate([[1, 2, 3], [7]], pad_id=PAD)
    assert ids.tolist() == [[1, 2, 3], [7, PAD, PAD]] and lengths.tolist() == [3, 1]


def test_book_last_position_pooling_reads_padding() -> None:
    """--pooling last is the book's [:, -1]: with padding it reads a pad (which is why gptclf
    pairs it with --padding longest, and defaults to last-nonpad)."""
    clf_last, clf_real = classifier("gpt2", "last"), classifier("gpt2", "last-nonpad")
    alone, n1 = collate([[5, 9, 11]], PAD)
    padded, n2 = collate([[5, 9, 11]], PAD, pad_to=5)
    with torch.no_grad():
        torch.testing.assert_close(clf_real(alone, n1), clf_real(padded, n2))
        assert not torch.allclose(clf_last(alone, n1), clf_last(padded, n2))
