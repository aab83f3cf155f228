"""Mistral: Llama's architecture with sliding-window attention (Mistral 7B v0.1: each
query sees the last 4096 keys; v0.2+ turn it off) and an explicit ``head_dim`` in newer
configs. GGUF files of Mistral are written with llama.cpp's ``llama`` architecture, so
the Llama family reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .family import TOKENIZER_JSON, Family, Preset
from .llama import (LlamaConfig, LlamaModel, convert_hf_state_dict, hf_common, hf_export_config, hf_sliding,
                    to_hf_state_dict)


@dataclass
class MistralConfig(LlamaConfig):
    arch: str = field(default="mistral", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "MistralConfig":
        return cls(**hf_common(hf), **hf_sliding(hf))


# Published shapes; no recipe (no Mistral weights offline here, nothing measured: docs/models.md).
PRESETS = {
    "mistral-7b-v0.1": MistralConfig(
        vocab_size=32000, context_length=32768, emb_dim=4096, n_heads=32, n_kv_heads=8, n_layers=32,
        hidden_dim=14336, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, sliding_window=4096),
    "mistral-7b-v0.3": MistralConfig(
        vocab_size=32768, context_length=32768, emb_dim=4096, n_heads=32, n_kv_heads=8, n_layers=32,
        hidden_dim=14336, rope_theta=1000000.0, norm_eps=1e-5, tie_embeddings=False),
}

FAMILY = Family(
    arch="mistral",
    config_cls=MistralConfig,
    model_cls=LlamaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("mistral",),
    config_from_hf=MistralConfig.from_hf,
    convert_hf=convert_hf_state_dict,
    hf_export_config=lambda cfg: hf_export_config(cfg, "mistral", "MistralForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={
        "mistral-7b-v0.1": Preset(PRESETS["mistral-7b-v0.1"], hub="mistralai/Mistral-7B-v0.1",
                                  aliases=("mistralai/Mistral-7B-v0.1",)),
        "mistral-7b-v0.3": Preset(PRESETS["mistral-7b-v0.3"], hub="mistralai/Mistral-7B-v0.3",
                                  aliases=("mistralai/Mistral-7B-v0.3",)),
    },
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
