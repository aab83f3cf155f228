"""Phi-3 / Phi-4-mini: Llama's architecture with the query/key/value projections stored as
one ``qkv_proj`` matrix and gate/up as one ``gate_up_proj`` (gptclf's own fused layout,
so the weights load as they are), sliding-window attention (Phi-3-mini-4k: 2047), and
partial rotary embeddings (Phi-4-mini rotates 3/4 of each head).

The long-context variants (``rope_scaling`` type ``longrope``: Phi-3-*-128k, Phi-4-mini)
are refused with a message: their per-dimension rotary factors are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .family import TOKENIZER_JSON, Family, Preset
from .llama import LlamaConfig, LlamaModel, config_from_gguf_for, hf_common, hf_export_config, hf_sliding


@dataclass
class Phi3Config(LlamaConfig):
    arch: str = field(default="phi3", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Phi3Config":
        fields_ = hf_common(hf)
        head_dim = fields_["head_dim"]
        factor = float((hf.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                              hf.get("partial_rotary_factor", 1.0)))
        rotary = int(head_dim * factor)
        return cls(**fields_, rotary_dim=None if rotary == head_dim else rotary, **hf_sliding(hf))


def convert_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Phi3Config) -> dict[str, torch.Tensor]:
    """Hugging Face ``Phi3ForCausalLM`` names onto ours; the fused matrices keep their layout."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["embed_tokens.weight"], "final_norm.weight": sd["norm.weight"],
           "out_head.weight": sd.get("lm_head.weight", sd["embed_tokens.weight"])}
    for i in range(cfg.n_layers):
        h, p = f"layers.{i}.", f"trf_blocks.{i}."
        out[p + "att.qkv.weight"] = sd[h + "self_attn.qkv_proj.weight"]
        out[p + "att.out_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[p + "ff.fc.weight"] = sd[h + "mlp.gate_up_proj.weight"]
        out[p + "ff.proj.weight"] = sd[h + "mlp.down_proj.weight"]
        out[p + "norm1.weight"] = sd[h + "input_layernorm.weight"]
        out[p + "norm2.weight"] = sd[h + "post_attention_layernorm.weight"]
    return out


def convert_gguf(take: Any, cfg: Phi3Config) -> dict[str, torch.Tensor]:
    """llama.cpp's ``phi3`` tensors (fused ``attn_qkv``; ``ffn_up`` holds gate and up) onto ours;
    no query/key permutation (llama.cpp's NEOX rotary mode is our layout)."""
    sd: dict[str, torch.Tensor] = {"tok_emb.weight": take("token_embd.weight"),
                                   "final_norm.weight": take("output_norm.weight")}
    sd["out_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else take("output.weight")
    for i in range(cfg.n_layers):
        b, p = f"blk.{i}.", f"trf_blocks.{i}."
        sd[p + "att.qkv.weight"] = take(b + "attn_qkv.weight")
        sd[p + "att.out_proj.weight"] = take(b + "attn_output.weight")
        sd[p + "ff.fc.weight"] = take(b + "ffn_up.weight")
        sd[p + "ff.proj.weight"] = take(b + "ffn_down.weight")
        sd[p + "norm1.weight"] = take(b + "attn_norm.weight")
        sd[p + "norm2.weight"] = take(b + "ffn_norm.weight")
    return sd


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Phi3Config) -> dict[str, torch.Tensor]:
    """Our backbone under ``Phi3Model``'s names (``model.*``): the fused matrices as they are."""
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["final_norm.weight"]}
    for i in range(cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"model.layers.{i}."
        out[h + "self_attn.qkv_proj.weight"] = sd[p + "att.qkv.weight"]
        out[h + "self_attn.o_proj.weight"] = sd[p + "att.out_proj.weight"]
        out[h + "mlp.gate_up_proj.weight"] = sd[p + "ff.fc.weight"]
        out[h + "mlp.down_proj.weight"] = sd[p + "ff.proj.weight"]
        out[h + "input_layernorm.weight"] = sd[p + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[p + "norm2.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# Published shape; no recipe (no Phi weights offline here, nothing measured: docs/models.md).
PRESETS = {
    "phi-3-mini-4k": Phi3Config(
        vocab_size=32064, context_length=4096, emb_dim=3072, n_heads=32, n_kv_heads=32, n_layers=32,
        hidden_dim=8192, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, sliding_window=2047),
}

FAMILY = Family(
    arch="phi3",
    config_cls=Phi3Config,
    model_cls=LlamaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("phi3",),
    config_from_hf=Phi3Config.from_hf,
    convert_hf=convert_hf_state_dict,
    gguf_archs=("phi3",),
    config_from_gguf=config_from_gguf_for(Phi3Config, "phi3"),
    convert_gguf=convert_gguf,
    hf_export_config=lambda cfg: hf_export_config(cfg, "phi3", "Phi3ForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={
        "phi-3-mini-4k": Preset(PRESETS["phi-3-mini-4k"], hub="microsoft/Phi-3-mini-4k-instruct",
                                aliases=("microsoft/Phi-3-mini-4k-instruct",)),
    },
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
