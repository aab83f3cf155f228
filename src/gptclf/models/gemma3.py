"""Gemma 3 text (``model_type: gemma3_text``, e.g. Gemma 3 1B): Gemma 2's module
(:mod:`gptclf.models.gemma2`) with a GemmaRMSNorm over each query/key head, no
soft-capping, five sliding-window layers per full one, and two RoPE bases (``rope_theta``
for full layers, with the 4B+ models' linear position scaling; ``rope_local_base_freq``
for sliding ones). The multimodal ``gemma3`` checkpoints (4B+) nest this config under
``text_config`` and are not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import GptclfError
from .family import TOKENIZER_JSON, Family, Preset
from .gemma2 import Gemma2Config, GemmaModel, convert_hf_state_dict, gemma_common, hf_export_config, to_hf_state_dict


@dataclass
class Gemma3Config(Gemma2Config):
    qk_norm: bool = True
    arch: str = field(default="gemma3", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Gemma3Config":
        n = hf["num_hidden_layers"]
        pattern = hf.get("sliding_window_pattern", 6)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            # every pattern-th layer is global: 0 or less is no pattern (and a division by zero)
            raise ValueError(f"sliding_window_pattern={pattern!r} must be a positive integer")
        types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                          for i in range(n)]
        full, local = _rope(hf)
        fields_ = gemma_common({**hf, "layer_types": types, "rope_theta": full.get("rope_theta", 1000000.0)})
        kind = full.get("rope_type", full.get("type", "default"))
        if kind not in ("default", "linear"):
            raise GptclfError(f"gemma3 rotary scaling {kind!r} is not supported (default and linear are)")
        return cls(**fields_, attn_softcap=None, final_softcap=None,
                   rope_local_theta=float(local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))),
                   rope_linear_factor=float(full.get("factor", 1.0)) if kind == "linear" else 1.0)


def _rope(hf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full-attention, sliding-attention) rotary settings: transformers >= 5 nests them per layer
    type in rope_parameters; older files have rope_theta, rope_local_base_freq and rope_scaling."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    full = {"rope_theta": hf.get("rope_theta", 1000000.0), **(hf.get("rope_scaling") or {})}
    return full, {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}


PRESETS = {
    "gemma-3-1b": Gemma3Config(
        vocab_size=262144, context_length=32768, emb_dim=1152, n_heads=4, n_kv_heads=1, n_layers=26,
        hidden_dim=6912, head_dim=256, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
        sliding_window=512, layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention"
                                         for i in range(26)],
        query_pre_attn_scalar=256.0, rope_local_theta=10000.0),
}

FAMILY = Family(
    arch="gemma3",
    config_cls=Gemma3Config,
    model_cls=GemmaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("gemma3_text",),
    config_from_hf=Gemma3Config.from_hf,
    convert_hf=convert_hf_state_dict,
    hf_export_config=lambda cfg: hf_export_config(cfg, "gemma3_text", "Gemma3TextForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={"gemma-3-1b": Preset(PRESETS["gemma-3-1b"], hub="google/gemma-3-1b-pt", aliases=("google/gemma-3-1b-pt",))},
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
