"""Reading a fine-tuned model directory: its config.json and its weights.

:func:`read_run_config` checks config.json (:class:`gptclf.config.RunConfig`);
:func:`load_classifier_backbone` rebuilds the backbone with its class head from
``model.safetensors`` -- comparing names and shapes on the meta device before any memory
is allocated -- or, for a run that stores only its trained tensors (the default) or LoRA
adapters, rebuilds the base model it names and lays them over it (:mod:`.base`). Nothing
is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import GptclfError
from ..files import file_inside, read_json
from ..loading.state_dict import state_dict_problems
from ..models import registry
from ..models.classifier import replace_head
from .base import TRAINED_ONLY, load_trained_only


def read_run_config(directory: str | Path) -> RunConfig:
    directory = Path(directory).expanduser()
    cfg_path = file_inside(directory, "config.json")
    if not directory.exists():
        raise GptclfError(f"model directory {directory} does not exist",
                          hint="train one with 'gptclf train' (it writes runs/latest)")
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json", hint="is this a gptclf run directory?")
    return RunConfig.from_json(read_json(cfg_path), str(cfg_path))


def read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise GptclfError(f"{weights} is not a valid safetensors file ({type(e).__name__}: {e})",
                          hint="the file is truncated or corrupted; retrain or restore it") from None


def file_shapes(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file declares, as meta tensors: names and shapes, no data read."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise GptclfError(f"{weights} is not a valid safetensors file ({type(e).__name__}: {e})",
                          hint="the file is truncated or corrupted; retrain or restore it") from None


def load_classifier_backbone(directory: Path, cfg: RunConfig, arch: Any) -> nn.Module:
    """The backbone with its class head and the run's trained weights."""
    weights = file_inside(directory, "model.safetensors")
    if not weights.exists():
        raise GptclfError(f"{directory} has no model.safetensors")
    if cfg.lora:
        # Adapters only: rebuild the base model it names (checked against its fingerprint)
        # and merge them into it.
        from ..peft.lora import load_adapter_backbone

        return load_adapter_backbone(directory, cfg, read_safetensors(weights))
    # Compare config and file on the meta device first: a config whose sizes disagree
    # with the weights (or are absurd) is refused before any memory is allocated.
    with torch.device("meta"):
        skeleton = replace_head(registry.family(arch.arch).model_cls(arch), cfg.num_classes, cfg.head_bias)
    own = skeleton.state_dict()
    if cfg.weights == TRAINED_ONLY:
        # The tensors training changed: each must be one of the model's, then the base it
        # names is rebuilt (checked against its fingerprint) and they are laid over it.
        declared = file_shapes(weights)
        problems = state_dict_problems({k: v for k, v in own.items() if k in declared}, declared)
        if problems:
            raise GptclfError(f"{directory}: config.json and model.safetensors disagree: {problems}",
                              hint="the directory mixes files of different models; retrain or restore it")
        return load_trained_only(directory, cfg, read_safetensors(weights))
    declared = _with_tied(own, file_shapes(weights))
    problems = state_dict_problems(own, declared)
    if problems:
        raise GptclfError(f"{directory}: config.json and model.safetensors disagree: {problems}",
                          hint="the directory mixes files of different models; retrain or restore it")
    backbone = registry.build_model(arch, initialise=False)  # every weight comes from the file (strict)
    replace_head(backbone, cfg.num_classes, cfg.head_bias)
    backbone.load_state_dict(_with_tied(backbone.state_dict(), read_safetensors(weights)), strict=True)
    return backbone


def _with_tied(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights are stored once; fill the aliases from their twin."""
    for k in own:
        if k not in sd and k.endswith("out_head.weight") and "tok_emb.weight" in sd:
            sd[k] = sd["tok_emb.weight"]
    return sd
