"""What the rest of gptclf needs to know about a model family, in one record.

Each family file (:mod:`gptclf.models.gpt2`, :mod:`gptclf.models.llama`) ends with a
``FAMILY = Family(...)``; :mod:`gptclf.models.registry` lists them. Loaders, training,
quantization and export ask the registry; the registry asks nobody.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

# Where a family's tokenizer comes from: GPT-2's BPE shipped with gptclf's dependencies,
# or the ``tokenizer.json`` of the model's directory (or the vocabulary inside a GGUF file).
TOKENIZER_GPT2_BPE = "gpt2-bpe"
TOKENIZER_JSON = "tokenizer.json"


@dataclass(frozen=True)
class Preset:
    """A named, published model: ``--model NAME`` resolves to it."""

    config: Any                                    # the family's config object (published shapes)
    hub: str | None = None                         # Hugging Face repository holding the weights
    package_file: tuple[str, str] | None = None    # (Python package, file name) shipping a GGUF
    recipe: dict[str, Any] = field(default_factory=dict)  # defaults for options left out (measured)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    arch: str                                      # the name config.json stores ("gpt2", "llama")
    config_cls: type
    model_cls: type[nn.Module]
    tokenizer: str                                 # TOKENIZER_GPT2_BPE or TOKENIZER_JSON
    hf_model_types: tuple[str, ...] = ()           # Hugging Face config.json "model_type" values
    config_from_hf: Callable[[dict[str, Any]], Any] | None = None
    convert_hf: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    gguf_archs: tuple[str, ...] = ()               # GGUF "general.architecture" values
    config_from_gguf: Callable[[dict[str, Any], set[str]], Any] | None = None
    # (take(name) -> fp32 tensor, config) -> our state dict; ``take`` records what was used.
    convert_gguf: Callable[[Callable[[str], Any], Any], dict[str, Any]] | None = None
    presets: dict[str, Preset] = field(default_factory=dict)
    # ``gptclf export --format hf``: config -> the Hugging Face config.json fields (model_type,
    # architectures: its *ForSequenceClassification), and our backbone's state dict -> the
    # Hugging Face tensor names (without the class head, which is written as ``score``).
    hf_export_config: Callable[[Any], dict[str, Any]] | None = None
    to_hf: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    # Linears (names inside a block) that stay fp32 under int8 inference: their inputs carry
    # outlier channels that one int8 scale cannot represent (gptclf.inference.onnx, quantize_graph).
    int8_fp32_linears: tuple[str, ...] = ()
    # The class head's bias by default (--head-bias / --no-head-bias). Hugging Face's
    # *ForSequenceClassification heads have none; GPT-2 keeps the book's, which export folds into ln_f.
    head_bias: bool = False
