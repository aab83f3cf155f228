"""Texts to token ids: the run's template around each text, truncation to ``max_length``
(the text is cut, never the template), the book's pad-to length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import GptclfError, warn


@dataclass
class EncodedDataset:
    """Token ids (unpadded, truncated to ``max_length``) and integer labels."""

    ids: list[list[int]]
    labels: torch.Tensor  # int64 [n]; -1 where unlabelled; --multi-label: float32 0/1 [n, num_labels]
    max_length: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


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
    room = max_length - len(pre) - len(post)
    if room < 1:
        raise GptclfError(f"{where}: the template alone takes {len(pre) + len(post)} tokens, "
                          f"which leaves no room for the text within {max_length}",
                          hint="use a shorter --template or a larger --max-length")
    long = sum(1 for t in ids if len(t) > room)
    if long:
        warn(f"{where}: {long} text(s) longer than {max_length} tokens were truncated")
    return [pre + t[:room] + post for t in ids]


def encode_examples(tokenizer, texts: Sequence[str], label_ids: Sequence[int] | None,
                    max_length: int | None, context_length: int, where: str = "data",
                    template: str | None = None) -> EncodedDataset:
    ids, pre, post = tokenize_texts(tokenizer, texts, template)
    extra = len(pre) + len(post)
    if max_length is None:
        max_length = longest_encoded_length(ids) + extra
    if max_length > context_length:
        warn(f"{where}: the longest text has {max_length} tokens, more than the model's context "
             f"of {context_length}; truncating to {context_length}")
        max_length = context_length
    ids = fit_to_length(ids, pre, post, max_length, where)
    if isinstance(label_ids, np.ndarray) and label_ids.ndim == 2:  # --multi-label: 0/1 per label
        labels = torch.from_numpy(label_ids.astype(np.float32))
    else:
        labels = torch.tensor(list(label_ids) if label_ids is not None else [-1] * len(ids), dtype=torch.long)
    return EncodedDataset(ids, labels, max_length)


