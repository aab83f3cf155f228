"""What every tokenizer offers the rest of gptclf."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..errors import GptclfError


class Tokenizer(Protocol):
    name: str
    pad_id: int
    vocab_size: int

    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_config(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> None: ...


def require(package: str) -> None:
    """Fail with an install hint, not an ImportError traceback, when a reader is missing."""
    if importlib.util.find_spec(package) is None:
        raise GptclfError(f"this model needs the '{package}' package, which is not installed",
                          hint=f"pip install {package}")
