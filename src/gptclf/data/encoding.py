"""Texts to token ids: the run's template around each text, truncation to ``max_length``
(the text is cut, never the template), the book's pad-to length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import GptclfError, warn
from .long_text import LongText, fit_texts


@dataclass
class EncodedDataset:
    """Token ids (unpadded, fitted to ``max_length``) and integer labels.

    With ``--long-text chunk`` (``offsets`` given) ``ids`` holds one row per window and text
    ``i`` is ``ids[offsets[i]:offsets[i+1]]``; ``len`` and ``lengths`` still count texts."""

    ids: list[list[int]]
    labels: torch.Tensor  # int64 [n]; -1 where unlabelled; --multi-label: float32 0/1 [n, num_labels]
    max_length: int
    offsets: np.ndarray | None = None  # chunk: each text's window range in ids
    text_lengths: np.ndarray | None = None  # each text's own tokens before fitting (no template)
    truncated: np.ndarray | None = None  # bool per text: tokens were dropped

    def __len__(self) -> int:
        return len(self.ids) if self.offsets is None else len(self.offsets) - 1

    @property
    def row_lengths(self) -> np.ndarray:
        """Tokens of each row of ``ids`` (a text, or a window)."""
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    @property
    def lengths(self) -> np.ndarray:
        """Tokens each text is fed as (all its windows' together): what batches are sorted by."""
        rows = self.row_lengths
        if self.offsets is None:
            return rows
        return np.add.reduceat(rows, self.offsets[:-1]) if len(rows) else np.zeros(len(self), np.int64)

    @property
    def windows(self) -> np.ndarray | None:
        """Windows per text (chunk), else None."""
        return None if self.offsets is None else np.diff(self.offsets)

    def window_rows(self) -> "EncodedDataset":
        """Every window as a text of its own (unlabelled): what the trunk cache is built over."""
        return EncodedDataset(self.ids, torch.full((len(self.ids),), -1, dtype=torch.long), self.max_length)


def unicode_clean(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (a valid pair is joined).

    JSON can carry lone surrogates (``"\\ud800"``) but UTF-8 cannot: tiktoken replaced
    them and the Hugging Face tokenizers raised TypeError, so one such text failed a
    whole batch on some models only. Cleaning here, before any tokenizer, makes every
    tokenizer see the same text (the same one tiktoken always saw).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def longest_encoded_length(token_lists: Iterable[Sequence[int]]) -> int:
    """The book's ``_longest_encoded_length``: the pad-to length is the longest training text."""
    return max((len(t) for t in token_lists), default=1)


def split_template(template: str | None) -> tuple[str, str]:
    """``"Message: {text}\\nSpam?"`` -> (prefix, suffix) around the one ``{text}`` slot."""
    if not template:
        return "", ""
    if template.count("{text}") != 1:
        raise GptclfError(f"--template must contain {{text}} exactly once, got {template!r}",
                          hint='e.g. --template "Message: {text}\\nIs this message spam?"')
    prefix, suffix = template.split("{text}")
    return prefix, suffix


def tokenize_texts(tokenizer, texts: Sequence[str], template: str | None = None
                   ) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids of each text and of the template's prefix and suffix.

    The prefix and suffix are encoded once, apart from the text, so truncation can cut
    the text and keep the suffix: with a template that ends in a question, the last
    token (the one the classifier reads) is always the question's.
    """
    prefix, suffix = split_template(template)
    # The template is the user's own option, so its special tokens count (a chat format
    # like "<|im_start|>user\n{text}<|im_end|>" works); the texts are data and never do.
    pre = tokenizer.encode(prefix, allow_special=True) if prefix else []
    post = tokenizer.encode(suffix, allow_special=True) if suffix else []
    ids = tokenizer.encode_batch([unicode_clean(t) for t in texts])
    for i, t in enumerate(ids):
        if not t and not pre and not post:
            # A text of only characters the tokenizer drops: one pad so it still gets a row.
            ids[i] = [tokenizer.pad_id]
    return ids, pre, post


def fit_to_length(ids: list[list[int]], pre: list[int], post: list[int], max_length: int,
                  where: str) -> list[list[int]]:
    """``prefix + text + suffix`` for each text, cutting the text to fit ``max_length``."""
    return fit_texts(ids, pre, post, max_length, LongText(), where).rows


def pad_to_length(ids: Sequence[Sequence[int]], extra: int, max_length: int | None, context_length: int,
                  where: str) -> int:
    """The max length: as given, or (None) the longest text with its template (the book's), at
    most the model's context."""
    if max_length is None:
        max_length = longest_encoded_length(ids) + extra
    if max_length > context_length:
        warn(f"{where}: the longest text has {max_length} tokens, more than the model's context "
             f"of {context_length}; truncating to {context_length}")
        max_length = context_length
    return max_length


def encode_examples(tokenizer, texts: Sequence[str], label_ids: Sequence[int] | None,
                    max_length: int | None, context_length: int, where: str = "data",
                    template: str | None = None, long_text: LongText | None = None) -> EncodedDataset:
    ids, pre, post = tokenize_texts(tokenizer, texts, template)
    return encode_tokens(ids, pre, post, label_ids, max_length, context_length, where, long_text)


def encode_tokens(ids: list[list[int]], pre: list[int], post: list[int], label_ids: Sequence[int] | None,
                  max_length: int | None, context_length: int, where: str = "data",
                  long_text: LongText | None = None) -> EncodedDataset:
    """:func:`encode_examples` of texts :func:`tokenize_texts` has tokenized."""
    max_length = pad_to_length(ids, len(pre) + len(post), max_length, context_length, where)
    raw = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
    fitted = fit_texts(ids, pre, post, max_length, long_text or LongText(), where)
    if isinstance(label_ids, np.ndarray) and label_ids.ndim == 2:  # --multi-label: 0/1 per label
        labels = torch.from_numpy(label_ids.astype(np.float32))
    else:
        labels = torch.tensor(list(label_ids) if label_ids is not None else [-1] * len(ids), dtype=torch.long)
    return EncodedDataset(fitted.rows, labels, max_length, fitted.offsets, raw, np.asarray(fitted.truncated, bool))


