"""GPT-2 from scratch: the architecture of chapters 2-4 of the book, in one file.

Token + position embeddings, ``n_layers`` pre-LayerNorm transformer blocks with causal
multi-head attention (through ``F.scaled_dot_product_attention``) and a GELU (tanh) MLP,
a final LayerNorm and an output head. Module names follow the book (``tok_emb``,
``pos_emb``, ``trf_blocks``, ``final_norm``, ``out_head``) so its chapter-6 code maps
one to one; the query/key/value projections are fused into one ``qkv`` linear because
one large matrix product is faster than three small ones.

Every backbone exposes the same small interface that the classifier uses, so GPT-2 and
the Llama family share one fine-tuning code path:

* ``embed(input_ids) -> hidden``
* ``run_blocks(hidden, start, end) -> hidden`` (blocks ``start .. end-1``)
* ``trf_blocks`` (``nn.ModuleList``), ``final_norm``, ``out_head``
* ``config`` with ``n_layers``, ``emb_dim``, ``vocab_size``, ``context_length``
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .family import TOKENIZER_GPT2_BPE, Family, Preset


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    arch: str = field(default="gpt2", init=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPT2Config":
        d = {k: v for k, v in d.items() if k != "arch"}
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "GPT2Config":
        """Build from a Hugging Face ``config.json`` (``model_type: gpt2``)."""
        return cls(
            vocab_size=hf["vocab_size"],
            context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
            emb_dim=hf["n_embd"],
            n_heads=hf["n_head"],
            n_layers=hf["n_layer"],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )


# The four OpenAI GPT-2 sizes (table in chapter 5); FAMILY below names their hub repositories.
PRESETS: dict[str, GPT2Config] = {
    "gpt2-small": GPT2Config(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPT2Config(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPT2Config(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPT2Config(emb_dim=1600, n_layers=48, n_heads=25),
}


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        assert cfg.emb_dim % cfg.n_heads == 0, "emb_dim must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.drop_rate = cfg.drop_rate
        # Chapter 6's bonus experiment "no causal mask" flips this (attn_mask then hides pads).
        self.causal = True

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.drop_rate if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), attn_mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPT2Model(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2 ties the output head to the token embedding.
        self.out_head.weight = self.tok_emb.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        return self.drop_emb(self.tok_emb(input_ids) + self.pos_emb(pos))

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None,
                   attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.trf_blocks[start:end]:
            x = block(x, attn_mask)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[batch, seq, vocab]`` (or ``num_classes`` after the head swap)."""
        return self.out_head(self.final_norm(self.run_blocks(self.embed(input_ids))))


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation (normal 0.02), used for --init random.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def convert_hf_state_dict(sd: dict[str, torch.Tensor], cfg: GPT2Config) -> dict[str, torch.Tensor]:
    """Map Hugging Face GPT-2 weight names onto ours.

    HF stores the linear layers as ``Conv1D`` with weights of shape ``[in, out]``; ours are
    ``nn.Linear`` (``[out, in]``), hence the transposes.
    """
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {
        "tok_emb.weight": sd["wte.weight"],
        "pos_emb.weight": sd["wpe.weight"],
        "final_norm.weight": sd["ln_f.weight"],
        "final_norm.bias": sd["ln_f.bias"],
    }
    for i in range(cfg.n_layers):
        h, o = f"h.{i}.", f"trf_blocks.{i}."
        for src, dst in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[o + dst + ".weight"] = sd[h + src + ".weight"]
            out[o + dst + ".bias"] = sd[h + src + ".bias"]
        for src, dst in (("attn.c_attn", "att.qkv"), ("attn.c_proj", "att.out_proj"),
                         ("mlp.c_fc", "ff.fc"), ("mlp.c_proj", "ff.proj")):
            out[o + dst + ".weight"] = sd[h + src + ".weight"].t().contiguous()
            out[o + dst + ".bias"] = sd[h + src + ".bias"]
    # The head is tied to wte unless the checkpoint carries its own.
    out["out_head.weight"] = sd.get("lm_head.weight", sd["wte.weight"])
    return out


def hf_export_config(cfg: GPT2Config) -> dict[str, Any]:
    """Hugging Face ``config.json`` fields of a ``GPT2ForSequenceClassification`` of this shape."""
    return {"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"],
            "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
            "n_embd": cfg.emb_dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
            "layer_norm_epsilon": cfg.layer_norm_eps, "activation_function": "gelu_new",
            "bos_token_id": 50256, "eos_token_id": 50256}


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: GPT2Config) -> dict[str, torch.Tensor]:
    """Our backbone under ``GPT2Model``'s names (``transformer.*``, Conv1D ``[in, out]``
    weights): the inverse of :func:`convert_hf_state_dict`. The head is the caller's."""
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
    for i in range(cfg.n_layers):
        o, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + theirs + ".weight"] = sd[o + ours + ".weight"]
            out[h + theirs + ".bias"] = sd[o + ours + ".bias"]
        for ours, theirs in (("att.qkv", "attn.c_attn"), ("att.out_proj", "attn.c_proj"),
                             ("ff.fc", "mlp.c_fc"), ("ff.proj", "mlp.c_proj")):
            w = sd[o + ours + ".weight"]
            out[h + theirs + ".weight"] = w.t()
            # Hugging Face's GPT-2 always has these biases; ours may not (qkv_bias=False): zeros.
            out[h + theirs + ".bias"] = sd.get(o + ours + ".bias", torch.zeros(w.shape[0]))
    return {k: v.contiguous() for k, v in out.items()}


FAMILY = Family(
    arch="gpt2",
    config_cls=GPT2Config,
    model_cls=GPT2Model,
    tokenizer=TOKENIZER_GPT2_BPE,
    hf_model_types=("gpt2",),
    config_from_hf=GPT2Config.from_hf,
    convert_hf=convert_hf_state_dict,
    hf_export_config=hf_export_config,
    to_hf=to_hf_state_dict,
    head_bias=True,  # the book's Linear(768, 2); its bias folds into ln_f for a Hugging Face export
    # OpenAI's four sizes, fetched from the Hugging Face hub; no recipe: the book's defaults.
    presets={
        "gpt2-small": Preset(PRESETS["gpt2-small"], hub="openai-community/gpt2",
                             aliases=("gpt2", "gpt2-124m", "openai-community/gpt2")),
        "gpt2-medium": Preset(PRESETS["gpt2-medium"], hub="openai-community/gpt2-medium",
                              aliases=("gpt2-355m", "openai-community/gpt2-medium")),
        "gpt2-large": Preset(PRESETS["gpt2-large"], hub="openai-community/gpt2-large",
                             aliases=("gpt2-774m", "openai-community/gpt2-large")),
        "gpt2-xl": Preset(PRESETS["gpt2-xl"], hub="openai-community/gpt2-xl",
                          aliases=("gpt2-1558m", "openai-community/gpt2-xl")),
    },
    # The MLP's down projection, whose GELU input has the outlier channels. Measured on the
    # benchmark's fine-tuned GPT-2 (300 test texts): every linear int8 per channel flipped 5
    # predictions; with this one kept fp32, 1 (and prediction still ran 2x fp32's speed).
    int8_fp32_linears=("ff.proj",),
)
