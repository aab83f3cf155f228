"""The tokenizer from a GGUF file's metadata: SmolLM2's matches transformers', specials only when allowed."""

from __future__ import annotations

import json

import pytest

from gptclf.tokenizers import tokenizer_from_config

from helpers import needs_smollm2
from helpers import SMOLLM2_TEXTS as TEXTS

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_file):
    """SmolLM2's tokenizer alone, built from its GGUF metadata as load_backbone builds it
    (the weights are not read)."""
    from gptclf.loading.gguf import gguf_metadata, open_gguf
    from gptclf.tokenizers.gguf import tokenizer_from_gguf

    return tokenizer_from_gguf(gguf_metadata(open_gguf(smollm2_file)), "smollm2-135m")


@needs_smollm2
def test_smollm2_tokenizer_matches_transformers(smollm2_tokenizer, smollm2_file):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)
    tok = smollm2_tokenizer
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=True), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    # Digits are single tokens (SmolLM's pre-tokenizer), as in its own tokenizer.json.
    assert len(tok.encode("1234567890")) == 10
    assert tok.pad_id == 2 == hf.eos_token_id  # the file's padding id, which is also <|im_end|> (eos)
    assert tok.vocab_size == 49152


@needs_smollm2
def test_smollm2_special_tokens_only_when_allowed(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    text = "<|im_start|>user\nhi<|im_end|>"
    assert tok.encode(text, allow_special=True)[0] == 1
    plain = tok.encode(text)
    assert 1 not in plain and 2 not in plain
    assert tok.decode(plain) == text

    tok.save(tmp_path)
    config = json.loads(json.dumps(tok.to_config()))
    assert config["type"] == "hf-tokenizers" and config["file"] == "tokenizer.json"
    again = tokenizer_from_config(config, tmp_path)
    assert again.pad_id == 2
    for t in TEXTS + [text]:
        assert again.encode(t) == tok.encode(t)
