"""Model architectures, one file each, behind one small registry.

``ARCHITECTURES`` maps the ``arch`` name stored in a config to its config class and
module class; everything else in gptclf only uses the shared backbone interface
documented in :mod:`gptclf.models.gpt2` (``embed``, ``run_blocks``, ``trf_blocks``,
``final_norm``, ``out_head``, ``config``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import gpt2

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "gpt2": (gpt2.GPT2Config, gpt2.GPT2Model),
}


def register(arch: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    ARCHITECTURES[arch] = (config_cls, model_cls)


def config_from_dict(d: dict[str, Any]) -> Any:
    arch = d.get("arch", "gpt2")
    if arch not in ARCHITECTURES:
        from ..errors import GptclfError

        raise GptclfError(f"unknown architecture {arch!r} in config",
                          hint=f"known architectures: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch][0].from_dict(d)


def build_model(cfg: Any) -> nn.Module:
    """Instantiate the backbone for a config object (randomly initialised)."""
    return ARCHITECTURES[cfg.arch][1](cfg)
