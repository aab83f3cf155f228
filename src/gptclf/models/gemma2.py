"""Gemma 2 from scratch (and the module Gemma 3 text reuses: :mod:`gptclf.models.gemma3`).

What changes from Llama (:mod:`gptclf.models.llama`), and why it matters for parity:

* the token embedding is multiplied by ``sqrt(emb_dim)`` (Gemma's embeddings are small);
* RMSNorm scales by ``1 + w`` (weights stored around 0) and multiplies in fp32 *before*
  casting back, unlike Llama's ``w * x.to(dtype)``;
* four norms per block: before and after attention, before and after the MLP;
* the MLP is GeGLU: ``down(gelu_tanh(gate(x)) * up(x))``;
* attention scores are scaled by ``query_pre_attn_scalar ** -0.5`` (not always head_dim's)
  and, in Gemma 2, soft-capped: ``cap * tanh(scores / cap)``; the language-model logits are
  soft-capped too (``final_softcap``; the classifier's head is not, as in transformers'
  ``Gemma2ForSequenceClassification``);
* layers alternate between a sliding window and full attention (``layer_types``); Gemma 3
  gives the local layers their own RoPE base (``rope_local_theta``).

Module names follow Llama's (``att.qkv``, ``ff.fc``/``ff.proj``, ``norm1``/``norm2``), so
freezing, LoRA and int8 treat Gemma like the other families.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GptclfError
from .family import TOKENIZER_JSON, Family, Preset
from .llama import GroupedQueryAttention, LlamaConfig, RotaryEmbedding, hf_common


@dataclass
class Gemma2Config(LlamaConfig):
    query_pre_attn_scalar: float | None = None   # None: head_dim
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope_local_theta: float | None = None        # Gemma 3: the RoPE base of sliding layers
    rope_linear_factor: float = 1.0              # Gemma 3 (4B+): full layers' positions / factor
    arch: str = field(default="gemma2", init=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Gemma2Config":
        return cls(**gemma_common(hf), attn_softcap=_opt_float(hf.get("attn_logit_softcapping")),
                   final_softcap=_opt_float(hf.get("final_logit_softcapping")))


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _int_if_whole(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def gemma_common(hf: dict[str, Any]) -> dict[str, Any]:
    """The config fields Gemma 2 and Gemma 3 spell alike."""
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise GptclfError(f"{hf.get('model_type')} config with hidden_activation={act!r} is not supported "
                          "(only gelu_pytorch_tanh)")
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    plain = {k: v for k, v in hf.items() if k not in ("rope_parameters", "rope_scaling", "hidden_act",
                                                      "hidden_activation")}
    fields_ = hf_common({**plain, "rope_theta": hf.get("rope_theta", 10000.0)})
    window = hf.get("sliding_window")
    fields_.update(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or fields_["head_dim"]),
        tie_embeddings=True,  # Gemma always ties the head to the embedding
        sliding_window=int(window) if window and "sliding_attention" in types else None,
        layer_types=list(types) if window and "sliding_attention" in types else None,
    )
    return fields_


class GemmaRMSNorm(nn.Module):
    """RMSNorm scaled by ``1 + w``, all in fp32 (weights start at 0)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class GeGLU(nn.Module):
    def __init__(self, cfg: Gemma2Config) -> None:
        super().__init__()
        self.hidden_dim = cfg.hidden_dim
        self.fc = nn.Linear(cfg.emb_dim, 2 * cfg.hidden_dim, bias=False)  # [gate; up]
        self.proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).split(self.hidden_dim, dim=-1)
        return self.proj(F.gelu(gate, approximate="tanh") * up)


class GemmaBlock(nn.Module):
    def __init__(self, cfg: Gemma2Config, rope: RotaryEmbedding, window: int | None) -> None:
        super().__init__()
        self.norm1 = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)        # before attention
        self.att = GroupedQueryAttention(cfg, rope, window, norm=GemmaRMSNorm, softcap=cfg.attn_softcap,
                                         scale=(cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5)
        self.post_att_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.norm2 = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)        # before the MLP
        self.ff = GeGLU(cfg)
        self.post_ff_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.post_att_norm(self.att(self.norm1(x), attn_mask)))
        return x + self.drop_shortcut(self.post_ff_norm(self.ff(self.norm2(x))))


class GemmaModel(nn.Module):
    def __init__(self, cfg: Gemma2Config) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.rope = RotaryEmbedding(cfg)
        if cfg.rope_linear_factor != 1.0:
            self.rope.inv_freq = self.rope.inv_freq / cfg.rope_linear_factor
        local = self.rope
        if cfg.rope_local_theta is not None:
            local = RotaryEmbedding(dataclasses.replace(cfg, rope_theta=cfg.rope_local_theta, rope_scaling=None))
        self.trf_blocks = nn.ModuleList(
            GemmaBlock(cfg, local if cfg.window(i) is not None else self.rope, cfg.window(i))
            for i in range(cfg.n_layers))
        self.final_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(input_ids)
        # sqrt(width) rounded to the weights' dtype first, as the reference does.
        return self.drop_emb(h * torch.tensor(math.sqrt(self.config.emb_dim), dtype=h.dtype))

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None,
                   attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.trf_blocks[start:end]:
            x = block(x, attn_mask)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.out_head(self.final_norm(self.run_blocks(self.embed(input_ids))))
        cap = self.config.final_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)


def convert_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Gemma2Config) -> dict[str, torch.Tensor]:
    """Hugging Face ``Gemma2ForCausalLM``/``Gemma3ForCausalLM`` names onto ours."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["embed_tokens.weight"], "final_norm.weight": sd["norm.weight"],
           "out_head.weight": sd["embed_tokens.weight"]}
    for i in range(cfg.n_layers):
        h, p = f"layers.{i}.", f"trf_blocks.{i}."
        a = h + "self_attn."
        out[p + "att.qkv.weight"] = torch.cat([sd[a + f"{x}_proj.weight"] for x in "qkv"])
        out[p + "att.out_proj.weight"] = sd[a + "o_proj.weight"]
        if cfg.qk_norm:
            out[p + "att.q_norm.weight"], out[p + "att.k_norm.weight"] = sd[a + "q_norm.weight"], sd[a + "k_norm.weight"]
        out[p + "ff.fc.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[p + "ff.proj.weight"] = sd[h + "mlp.down_proj.weight"]
        for ours, theirs in (("norm1", "input_layernorm"), ("post_att_norm", "post_attention_layernorm"),
                             ("norm2", "pre_feedforward_layernorm"), ("post_ff_norm", "post_feedforward_layernorm")):
            out[p + ours + ".weight"] = sd[h + theirs + ".weight"]
    return out


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Gemma2Config) -> dict[str, torch.Tensor]:
    """Our backbone under Hugging Face's Gemma names (``model.*``): the inverse of
    :func:`convert_hf_state_dict`. The head is the caller's."""
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["final_norm.weight"]}
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"model.layers.{i}."
        for part, w in zip("qkv", sd[p + "att.qkv.weight"].split([q_rows, kv_rows, kv_rows])):
            out[h + f"self_attn.{part}_proj.weight"] = w
        out[h + "self_attn.o_proj.weight"] = sd[p + "att.out_proj.weight"]
        if cfg.qk_norm:
            out[h + "self_attn.q_norm.weight"] = sd[p + "att.q_norm.weight"]
            out[h + "self_attn.k_norm.weight"] = sd[p + "att.k_norm.weight"]
        gate, up = sd[p + "ff.fc.weight"].split(cfg.hidden_dim)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        out[h + "mlp.down_proj.weight"] = sd[p + "ff.proj.weight"]
        for ours, theirs in (("norm1", "input_layernorm"), ("post_att_norm", "post_attention_layernorm"),
                             ("norm2", "pre_feedforward_layernorm"), ("post_ff_norm", "post_feedforward_layernorm")):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_export_config(cfg: Gemma2Config, model_type: str = "gemma2",
                     architecture: str = "Gemma2ForSequenceClassification") -> dict[str, Any]:
    """Hugging Face ``config.json`` fields of a Gemma 2 (or, from gemma3, Gemma 3 text) classifier."""
    full = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_linear_factor != 1.0:
        full.update(rope_type="linear", factor=cfg.rope_linear_factor)
    out: dict[str, Any] = {
        "model_type": model_type, "architectures": [architecture],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.emb_dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "tie_word_embeddings": True,
        # transformers' config class insists on an int here (256 in every published model).
        "query_pre_attn_scalar": _int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
        "attn_logit_softcapping": cfg.attn_softcap, "final_logit_softcapping": cfg.final_softcap,
        "sliding_window": cfg.sliding_window,
        "layer_types": list(cfg.layer_types or ["full_attention"] * cfg.n_layers),
        "rope_theta": cfg.rope_theta,
    }
    if cfg.rope_local_theta is not None:  # Gemma 3: one set of rotary settings per layer type
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": cfg.rope_local_theta}}
        out["rope_local_base_freq"] = cfg.rope_local_theta
    else:
        out["rope_parameters"] = full
    return out


# Published shape; no recipe (no Gemma weights offline here, nothing measured: docs/models.md).
PRESETS = {
    "gemma-2-2b": Gemma2Config(
        vocab_size=256000, context_length=8192, emb_dim=2304, n_heads=8, n_kv_heads=4, n_layers=26,
        hidden_dim=9216, head_dim=256, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True,
        sliding_window=4096, layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention"
                                          for i in range(26)],
        query_pre_attn_scalar=256.0, attn_softcap=50.0, final_softcap=30.0),
}

FAMILY = Family(
    arch="gemma2",
    config_cls=Gemma2Config,
    model_cls=GemmaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("gemma2",),
    config_from_hf=Gemma2Config.from_hf,
    convert_hf=convert_hf_state_dict,
    hf_export_config=hf_export_config,
    to_hf=to_hf_state_dict,
    presets={"gemma-2-2b": Preset(PRESETS["gemma-2-2b"], hub="google/gemma-2-2b", aliases=("google/gemma-2-2b",))},
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
