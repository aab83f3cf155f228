"""What a loader returns: a language model ready for the head swap, and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..tokenizers.base import Tokenizer


@dataclass
class Backbone:
    """A language model ready for the head swap, with the tokenizer that goes with it."""

    model: nn.Module
    tokenizer: Tokenizer
    source: dict[str, Any] = field(default_factory=dict)  # where it came from, for config.json
