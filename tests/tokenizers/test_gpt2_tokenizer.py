"""The GPT-2 BPE tokenizer: tiktoken's ids, no special tokens from user text, rebuilt from its config."""

from __future__ import annotations

from gptclf.tokenizers.gpt2 import GPT2Tokenizer
from gptclf.tokenizers import tokenizer_from_config


def test_ids_match_tiktoken_gpt2() -> None:
    tok = GPT2Tokenizer()
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
    assert tok.encode(text, allow_special=True) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]
    assert tok.decode(tok.encode(text, allow_special=True)) == text
    assert tok.pad_id == 50256 and tok.vocab_size == 50257


def test_user_text_cannot_inject_special_tokens() -> None:
    tok = GPT2Tokenizer()
    ids = tok.encode("a <|endoftext|> b")
    assert 50256 not in ids
    assert tok.encode_batch(["a <|endoftext|> b"]) == [ids]


def test_rebuilt_from_config() -> None:
    tok = GPT2Tokenizer()
    again = tokenizer_from_config(tok.to_config())
    assert again.encode("Free entry in 2 a wkly comp") == tok.encode("Free entry in 2 a wkly comp")
