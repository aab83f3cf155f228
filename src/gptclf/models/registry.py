"""The model families gptclf knows, and the checks every config passes before a model is built.

Adding a family: write ``models/<family>.py`` ending in ``FAMILY = Family(...)`` (see
:mod:`gptclf.models.family`) and add it to :data:`FAMILIES` below. Everything else in
gptclf uses the shared backbone interface documented in :mod:`gptclf.models.gpt2`
(``embed``, ``run_blocks``, ``trf_blocks``, ``final_norm``, ``out_head``, ``config``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

from torch import nn

from ..device import available_ram
from ..errors import GptclfError
from . import gemma2, gemma3, gpt2, llama, mistral, phi3, qwen2, qwen3
from .family import Family, Preset

FAMILIES: dict[str, Family] = {f.arch: f for f in (gpt2.FAMILY, llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY,
                                                    mistral.FAMILY, phi3.FAMILY, gemma2.FAMILY, gemma3.FAMILY)}


def family(arch: str) -> Family:
    """The family of an ``arch`` name (as stored in config.json)."""
    if not isinstance(arch, str) or arch not in FAMILIES:
        raise GptclfError(f"unknown architecture {arch!r} in config",
                          hint=f"known architectures: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[arch]


def family_for_hf(model_type: Any) -> Family | None:
    """The family that reads a Hugging Face ``config.json`` with this ``model_type``."""
    return next((f for f in FAMILIES.values() if model_type in f.hf_model_types), None)


def hf_model_types() -> list[str]:
    return sorted(t for f in FAMILIES.values() for t in f.hf_model_types)


def family_for_gguf(arch: Any) -> Family | None:
    """The family that reads a GGUF file whose ``general.architecture`` is ``arch``."""
    return next((f for f in FAMILIES.values() if arch in f.gguf_archs), None)


def find_preset(name: str) -> tuple[str, Family, Preset] | None:
    """``(canonical name, family, preset)`` for a preset name or alias (any case), else None."""
    low = name.strip().lower()
    for fam in FAMILIES.values():
        for key, preset in fam.presets.items():
            if low == key.lower() or low in (a.lower() for a in preset.aliases):
                return key, fam, preset
    return None


def model_names() -> list[str]:
    """Every name ``--model`` resolves by itself (presets and their aliases)."""
    return sorted({n for f in FAMILIES.values() for k, p in f.presets.items() for n in (k, *p.aliases)})


def recipe_for(name: str) -> dict[str, Any]:
    """The preset's measured defaults for options the user leaves out ({} if it has none)."""
    found = find_preset(name)
    return dict(found[2].recipe) if found else {}


# Bounds far above any real model (Llama 3 405B: emb 16384, 126 layers, vocab 128k) and
# far below what would make a hostile config.json allocate terabytes.
MAX_DIMS: dict[str, int] = {
    "vocab_size": 1 << 22, "context_length": 1 << 20, "emb_dim": 1 << 16, "n_heads": 1 << 10,
    "n_kv_heads": 1 << 10, "n_layers": 1 << 10, "hidden_dim": 1 << 18, "head_dim": 1 << 12,
}


def config_from_dict(d: dict[str, Any]) -> Any:
    """The config object an ``architecture`` dict describes, checked before anything is allocated."""
    if not isinstance(d, dict):
        raise GptclfError(f"the architecture must be a JSON object, not {type(d).__name__}")
    arch = d.get("arch", "gpt2")
    fam = family(arch)
    try:
        cfg = fam.config_cls.from_dict(d)
    except GptclfError:
        raise
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
        raise GptclfError(f"invalid {arch} architecture in config: {type(e).__name__}: {e}") from None
    check_config(cfg)
    return cfg


# Values every real model has positive and finite: a norm's epsilon sits under a square root,
# query_pre_attn_scalar is raised to the power -1/2, a soft-cap divides, a RoPE base is a log's.
# Zero, negative or NaN builds a model whose every logit is NaN (or whose scale is complex).
POSITIVE_FLOATS = ("layer_norm_eps", "norm_eps", "rope_theta", "query_pre_attn_scalar", "attn_softcap",
                   "final_softcap", "rope_local_theta", "rope_linear_factor")


def check_config(cfg: Any, where: str = "architecture", spell: dict[str, str] | None = None) -> int:
    """Refuse sizes and values the model cannot be built from; return its fp32 size in bytes.

    Runs before any memory is allocated: the constructor is tried on the meta device. ``where``
    starts each message (the file's name) and ``spell`` gives a field the key the file calls it."""
    def bad(name: str, v: Any, why: str) -> GptclfError:
        key = (spell or {}).get(name, name)
        return GptclfError(f"{where}: {key}={v!r} {why}",
                           hint="config.json is corrupted or not from a model gptclf can load")

    for name, top in MAX_DIMS.items():
        if not hasattr(cfg, name):  # not a field of this architecture
            continue
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise bad(name, v, f"is not an integer between 1 and {top}")
    if cfg.arch == "gpt2" and cfg.emb_dim % cfg.n_heads:  # Llama configs carry their own head_dim
        raise GptclfError(f"{where}: emb_dim ({cfg.emb_dim}) is not a multiple of n_heads ({cfg.n_heads})")
    # Every other field must have its default's type (a JSON number for a float, ...).
    for f in dataclasses.fields(cfg):
        v, default = getattr(cfg, f.name), f.default
        if f.name in MAX_DIMS or default is dataclasses.MISSING or default is None:
            continue
        if not _of_type(v, default):
            raise bad(f.name, v, f"should be a {type(default).__name__}")
    for name in POSITIVE_FLOATS:
        v = getattr(cfg, name, None)
        if v is not None and not (_of_type(v, 1.0) and v > 0):
            raise bad(name, v, "must be a positive finite number")
    if not 0 <= getattr(cfg, "drop_rate", 0.0) < 1:
        raise bad("drop_rate", cfg.drop_rate, "must be in [0, 1)")
    try:
        return parameter_bytes(cfg)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, RuntimeError) as e:
        raise GptclfError(f"{where}: invalid {cfg.arch} architecture: {type(e).__name__}: {e}") from None


def _of_type(v: Any, default: Any) -> bool:
    """Whether a JSON value has the type of a field's default (any finite number for a float)."""
    if isinstance(default, bool):
        return isinstance(v, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, type(default)) and not (isinstance(v, bool) and not isinstance(default, bool))


def parameter_bytes(cfg: Any) -> int:
    """fp32 bytes of the model's parameters and buffers, counted on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        m = family(cfg.arch).model_cls(cfg)
    return 4 * (sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers()))


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """torch.nn.init's random fills made no-ops: the weights stay as allocated (uninitialised).
    For a model whose every parameter is loaded next (strictly) from a file: drawing 135M
    random numbers first took seconds of the start-up."""
    from torch.nn import init

    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_")
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def build_model(cfg: Any, initialise: bool = True) -> nn.Module:
    """Instantiate the backbone for a config object (randomly initialised; ``initialise=False``
    leaves the weights uninitialised, for a caller that loads all of them strictly next).

    The size is counted first on the meta device: a config that would need more memory
    than the machine has is refused with a message instead of being killed by the OOM killer.
    """
    need = check_config(cfg)
    free = available_ram()
    if need > free:
        raise GptclfError(f"the architecture needs {need / 2**30:.1f} GiB for its weights, more than the "
                          f"{free / 2**30:.1f} GiB of free memory",
                          hint="check the model's config.json (sizes) or use a smaller model")
    if initialise:
        return family(cfg.arch).model_cls(cfg)
    with _no_weight_init():
        return family(cfg.arch).model_cls(cfg)
