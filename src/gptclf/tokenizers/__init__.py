"""Tokenizers that work with no network: GPT-2's BPE (``gpt2.py``) and Hugging Face
``tokenizer.json`` files (``hf.py``; also rebuilt from a GGUF's vocabulary, ``gguf.py``).

A tokenizer describes itself with ``to_config()`` (stored in a run's ``config.json``) and
:func:`tokenizer_from_config` rebuilds it, so a model directory needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import GptclfError
from .base import Tokenizer


def tokenizer_from_config(cfg: dict[str, Any], directory: Path | None = None) -> Tokenizer:
    kind = cfg.get("type")
    if kind == "tiktoken" and cfg.get("name") == "gpt2":
        from .gpt2 import GPT2Tokenizer

        return GPT2Tokenizer()
    if kind == "hf-tokenizers":
        from . import hf

        return hf.from_config(cfg, directory)
    raise GptclfError(f"unknown tokenizer {cfg!r}",
                      hint="this model directory was written by a newer gptclf; upgrade gptclf")
