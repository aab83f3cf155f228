"""Qwen3 (dense): Qwen2 without the q/k/v biases, with an RMSNorm over each query and key
head before the rotary embedding, and a head width (``head_dim``, 128) that is not
``emb_dim / n_heads``. All of it is switches of :mod:`gptclf.models.llama`'s blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .family import TOKENIZER_JSON, Family, Preset
from .llama import (LlamaConfig, LlamaModel, config_from_gguf_for, convert_gguf, convert_hf_state_dict, hf_common,
                    hf_export_config, hf_sliding, to_hf_state_dict)


@dataclass
class Qwen3Config(LlamaConfig):
    qk_norm: bool = True
    arch: str = field(default="qwen3", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Qwen3Config":
        return cls(**hf_common(hf), **hf_sliding(hf))


# Published shapes; no recipe (no Qwen3 weights offline here, nothing measured: docs/models.md).
PRESETS = {
    "qwen3-0.6b": Qwen3Config(
        vocab_size=151936, context_length=40960, emb_dim=1024, n_heads=16, n_kv_heads=8, n_layers=28,
        hidden_dim=3072, head_dim=128, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
    "qwen3-1.7b": Qwen3Config(
        vocab_size=151936, context_length=40960, emb_dim=2048, n_heads=16, n_kv_heads=8, n_layers=28,
        hidden_dim=6144, head_dim=128, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
}

FAMILY = Family(
    arch="qwen3",
    config_cls=Qwen3Config,
    model_cls=LlamaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("qwen3",),
    config_from_hf=Qwen3Config.from_hf,
    convert_hf=convert_hf_state_dict,
    gguf_archs=("qwen3",),
    config_from_gguf=config_from_gguf_for(Qwen3Config, "qwen3"),
    convert_gguf=partial(convert_gguf, permute_qk=False),  # NEOX rotary, like Qwen2
    hf_export_config=lambda cfg: hf_export_config(cfg, "qwen3", "Qwen3ForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={
        "qwen3-0.6b": Preset(PRESETS["qwen3-0.6b"], hub="Qwen/Qwen3-0.6B-Base", aliases=("Qwen/Qwen3-0.6B-Base",)),
        "qwen3-1.7b": Preset(PRESETS["qwen3-1.7b"], hub="Qwen/Qwen3-1.7B-Base", aliases=("Qwen/Qwen3-1.7B-Base",)),
    },
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
