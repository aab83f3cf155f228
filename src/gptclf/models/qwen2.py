"""Qwen2 / Qwen2.5: Llama's architecture (:mod:`gptclf.models.llama`) plus biases on the
query, key and value projections.

The small checkpoints (0.5B, 1.5B) tie the output head to the embedding. Sliding-window
attention exists in the config but every published checkpoint has it switched off
(``use_sliding_window: false``); when on, it applies to the layers ``layer_types`` (or,
in older files, ``max_window_layers``) marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .family import TOKENIZER_JSON, Family, Preset
from .llama import (LlamaConfig, LlamaModel, config_from_gguf_for, convert_gguf,
                    convert_hf_state_dict, hf_common, hf_export_config, hf_sliding, to_hf_state_dict)


@dataclass
class Qwen2Config(LlamaConfig):
    qkv_bias: bool = True
    arch: str = field(default="qwen2", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Qwen2Config":
        sliding = hf_sliding(hf)
        if sliding and sliding["layer_types"] is None:
            first = int(hf.get("max_window_layers", hf["num_hidden_layers"]))
            sliding["layer_types"] = ["sliding_attention" if i >= first else "full_attention"
                                      for i in range(hf["num_hidden_layers"])]
        return cls(**hf_common(hf, norm_eps=hf.get("rms_norm_eps", 1e-6)), **sliding)


# Published shapes (each model's config.json). No recipe: no Qwen weights are obtainable
# offline where gptclf is developed, so none was measured (docs/models.md).
PRESETS = {
    "qwen2.5-0.5b": Qwen2Config(
        vocab_size=151936, context_length=32768, emb_dim=896, n_heads=14, n_kv_heads=2, n_layers=24,
        hidden_dim=4864, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
    "qwen2.5-1.5b": Qwen2Config(
        vocab_size=151936, context_length=32768, emb_dim=1536, n_heads=12, n_kv_heads=2, n_layers=28,
        hidden_dim=8960, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
}

FAMILY = Family(
    arch="qwen2",
    config_cls=Qwen2Config,
    model_cls=LlamaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("qwen2",),
    config_from_hf=Qwen2Config.from_hf,
    convert_hf=convert_hf_state_dict,
    gguf_archs=("qwen2",),
    config_from_gguf=config_from_gguf_for(Qwen2Config, "qwen2"),
    # Qwen's rotary layout is already "rotate_half" (llama.cpp's NEOX mode): no q/k rows to un-permute.
    convert_gguf=partial(convert_gguf, permute_qk=False),
    hf_export_config=lambda cfg: hf_export_config(cfg, "qwen2", "Qwen2ForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={
        "qwen2.5-0.5b": Preset(PRESETS["qwen2.5-0.5b"], hub="Qwen/Qwen2.5-0.5B", aliases=("Qwen/Qwen2.5-0.5B",)),
        "qwen2.5-1.5b": Preset(PRESETS["qwen2.5-1.5b"], hub="Qwen/Qwen2.5-1.5B", aliases=("Qwen/Qwen2.5-1.5B",)),
    },
    # Same reasoning as Llama's (RMSNorm gains and the SwiGLU product carry outlier channels);
    # not measured on Qwen weights.
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
