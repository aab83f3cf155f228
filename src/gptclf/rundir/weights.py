"""The weights of a run directory: what model.safetensors holds, how it is saved and loaded.

A run directory is one of three kinds, told apart by config.json's ``weights`` and ``lora``:

* **full** (``weights: "full"``, the default, so absent in every directory written before the
  other kinds existed): model.safetensors is the whole classifier, backbone and class head;
  nothing else is needed to load it.
* **trained-only** (``weights: "trained-only"``): only the tensors training changed (the last
  blocks, the final norm, the class head) and ``base_weights: {"name", "fingerprint"}``, the
  base model they are laid over.
* **adapters** (``weights: "trained-only"`` and ``lora``, the adapters' rank, alpha, targets and
  dropout): LoRA adapters, final norm and head, on the base ``base_weights`` names; the
  adapters are merged into the base's weights when the run is loaded.

Saving: :func:`weights_to_save` decides, for the recipe, which kind a run is saved as and
returns the tensors with what config.json and metrics.json say about them
(:class:`SavedWeights`). Loading: :func:`load_classifier_backbone` returns the backbone with
its class head for a run directory of any kind, nothing unpickled. The size lines the end of
training and report.html print (:func:`describe_run_size`, :func:`describe_weights`) read
metrics.json's ``weights``, which this module writes.

Homes: this module is the format (which tensors, which keys); the base itself -- its
fingerprint, whether it can be named instead of copied, rebuilding and checking it, laying
tensors over it -- is :mod:`.base`; the LoRA mechanics (adapters, merging) are
:mod:`gptclf.peft.lora`, which knows nothing of run directories. LoRA directories written
before ``base_weights`` named every base spell it ``lora.base`` / ``lora.base_fingerprint``;
:meth:`gptclf.config.RunConfig.from_json` reads them into this one spelling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import GptclfError
from ..files import file_inside
from ..loading.state_dict import state_dict_problems
from ..models import registry
from ..models.classifier import SequenceClassifier, replace_head
from ..peft.lora import LoRAConfig, apply_lora, merge_lora, trained_state_dict
from .base import BaseCache, BaseWeights, base_reference, can_reload_base, load_base, overlay, share_untouched, \
    trained_tensors, why_not_referable

if TYPE_CHECKING:
    from ..config import RunConfig, TrainConfig
    from ..loading.backbone import Backbone

FULL, TRAINED_ONLY = "full", "trained-only"  # config.json's "weights" (and metrics.json's weights.mode)
ADAPTERS = "adapters"  # a trained-only run with LoRA adapters: a kind, not a value config.json spells


# ---------------------------------------------------------------------------- saving


@dataclass
class SavedWeights:
    """What a run saves as model.safetensors, and what config.json and metrics.json say about it."""

    tensors: dict[str, torch.Tensor] | None  # None: the whole classifier (rundir.save.classifier_state_dict)
    weights: str                             # config.json "weights": FULL or TRAINED_ONLY
    base_weights: dict[str, Any] | None      # config.json "base_weights": the base's name and fingerprint
    lora: dict[str, Any] | None              # config.json "lora": the adapters' config (adapter runs only)
    figures: dict[str, Any]                  # metrics.json "weights": mode, model_bytes, full_model_bytes, base


def weights_to_save(model: SequenceClassifier, cfg: TrainConfig, backbone: Backbone, base: BaseWeights,
                    log: Callable[[str], None]) -> SavedWeights:
    """The kind a trained classifier is saved as: only what training changed, with a reference to
    ``base`` (the base as loaded, before the head swap), unless the base cannot be rebuilt from
    its name or ``cfg.self_contained`` asks for the whole classifier. A LoRA run saved whole has
    its adapters merged first (``model`` changes in place)."""
    lora = cfg.trainable == "lora"
    why = "--self-contained" if cfg.self_contained else why_not_referable(backbone.source)
    if why is not None:
        if lora:
            merge_lora(model.backbone)
        if not cfg.self_contained:
            log(f"{why}: saving the full model with the LoRA adapters merged" if lora
                else f"{why}: saving the whole classifier")
        return _saved(model, None, None, None)
    # LoRA: what had requires_grad (adapters, final norm, head); else also any tensor that differs from the base.
    tensors = trained_state_dict(model) if lora else trained_tensors(model, base)
    if not lora and tensors.keys() == model.backbone.state_dict().keys():
        return _saved(model, None, None, None)  # everything trained: nothing to refer to
    ref = {"name": base_reference(backbone.source), "fingerprint": base.fingerprint}
    return _saved(model, tensors, ref, cfg.lora_config().to_dict() if lora else None)


def _saved(model: SequenceClassifier, tensors: dict[str, torch.Tensor] | None, base_weights: dict[str, Any] | None,
           lora: dict[str, Any] | None) -> SavedWeights:
    whole = model.backbone.state_dict()
    figures = {"mode": TRAINED_ONLY if tensors is not None else FULL,
               "model_bytes": tensor_bytes(tensors if tensors is not None else whole),
               "full_model_bytes": tensor_bytes(whole),
               "base": (base_weights or {}).get("name")}
    return SavedWeights(tensors, TRAINED_ONLY if base_weights else FULL, base_weights, lora, figures)


def tensor_bytes(tensors: Any) -> int:
    """Bytes of a state dict's tensors, a tied weight counted once."""
    seen: set[int] = set()
    total = 0
    for t in tensors.values():
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def describe_weights(info: dict[str, Any]) -> str:
    """``metrics.json``'s ``weights`` as a line: what model.safetensors holds and what it leaves out."""
    saved = human_bytes(info.get("model_bytes", 0))
    if info.get("mode") == TRAINED_ONLY:
        return (f"{saved}: the trained tensors only (base {info.get('base')}, "
                f"{human_bytes(info.get('full_model_bytes', 0))}, not copied)")
    return f"{saved}: the whole classifier (self-contained)"


def describe_run_size(dir_bytes: int, info: dict[str, Any], directory: Path) -> str:
    """The end-of-training line: the directory's size, and what a self-contained copy would take."""
    if info.get("mode") != TRAINED_ONLY:
        return f"{human_bytes(dir_bytes)} (self-contained)"
    whole = dir_bytes - info.get("model_bytes", 0) + info.get("full_model_bytes", 0)
    return (f"{human_bytes(dir_bytes)} (the trained tensors only; base {info.get('base')}, "
            f"{human_bytes(info.get('full_model_bytes', 0))}, not copied; 'gptclf export {directory} OUT' "
            f"writes a self-contained copy, about {human_bytes(whole)})")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------- loading


def run_kind(cfg: RunConfig) -> str:
    """FULL, TRAINED_ONLY or ADAPTERS (see the module's docstring)."""
    if cfg.weights == TRAINED_ONLY:
        return ADAPTERS if cfg.lora else TRAINED_ONLY
    return FULL


def load_classifier_backbone(directory: Path, cfg: RunConfig, bases: BaseCache | None = None) -> nn.Module:
    """The backbone with its class head and the run's trained weights, for a run of any kind
    (``cfg``: its checked config.json). With ``bases``, a run that names its base shares that
    base's untouched modules with every other run loaded through the same cache
    (:func:`.base.share_untouched`); without, it has its own copy."""
    weights = file_inside(directory, "model.safetensors")
    if not weights.exists():
        raise GptclfError(f"{directory} has no model.safetensors")
    kind = run_kind(cfg)
    if kind == ADAPTERS:
        return _load_adapters(directory, cfg, read_safetensors(weights), bases)
    # Compare config and file on the meta device first: a config whose sizes disagree
    # with the weights (or are absurd) is refused before any memory is allocated.
    arch = registry.config_from_dict(cfg.architecture)
    with torch.device("meta"):
        skeleton = _class_head(registry.family(arch.arch).model_cls(arch), cfg)
    own = skeleton.state_dict()
    if kind == TRAINED_ONLY:
        # Each saved tensor must be one of the model's before the base is rebuilt.
        declared = file_shapes(weights)
        _check_shapes(directory, {k: v for k, v in own.items() if k in declared}, declared)
        return _load_trained_only(directory, cfg, read_safetensors(weights), bases)
    _check_shapes(directory, own, _with_tied(own, file_shapes(weights)))
    backbone = registry.build_model(arch, initialise=False)  # every weight comes from the file (strict)
    _class_head(backbone, cfg)
    backbone.load_state_dict(_with_tied(backbone.state_dict(), read_safetensors(weights)), strict=True)
    return backbone


def _check_shapes(directory: Path, own: dict[str, torch.Tensor], declared: dict[str, torch.Tensor]) -> None:
    problems = state_dict_problems(own, declared)
    if problems:
        raise GptclfError(f"{directory}: config.json and model.safetensors disagree: {problems}",
                          hint="the directory mixes files of different models; retrain or restore it")


def _base_with_head(directory: Path, cfg: RunConfig, what: str, bases: BaseCache | None = None,
                    changed: set[str] | None = None) -> nn.Module:
    """The base ``base_weights`` names, rebuilt and checked (:func:`.base.load_base`), with a new
    class head for the saved one to be laid over; with ``bases``, a copy of the cached base that
    shares every module none of the ``changed`` tensors is in."""
    ref = cfg.base_weights if isinstance(cfg.base_weights, dict) else {}
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise GptclfError(f"{directory}: config.json says the weights are trained-only but names no base model",
                          hint="the run directory is damaged or edited; retrain it")
    if bases is None:
        model = load_base(directory, name, ref.get("fingerprint"), cfg.architecture, what=what)
    else:
        base = bases.get(directory, name, ref.get("fingerprint"), cfg.architecture, what)
        model = share_untouched(base, (changed or set()) | {"out_head.weight"})
    return _class_head(model, cfg)


def _class_head(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """The run's class head (and a chunked run's window pool) in place of the vocabulary head."""
    lt = cfg.long_text_mode
    return replace_head(model, cfg.num_classes, cfg.head_bias, lt.aggregation if lt.chunked else None)


def _head_names(model: nn.Module) -> list[str]:
    """The tensors every trained-only directory holds: the class head's (and the window pool's)."""
    return [k for k in model.state_dict() if k.startswith(("out_head.", "window_pool."))]


def _load_trained_only(directory: Path, cfg: RunConfig, saved: dict[str, torch.Tensor],
                       bases: BaseCache | None = None) -> nn.Module:
    """Base + class head + the saved tensors."""
    model = _base_with_head(directory, cfg, "fine-tuned weights", bases, set(saved))
    return overlay(directory, model, saved, _head_names(model))


def _load_adapters(directory: Path, cfg: RunConfig, saved: dict[str, torch.Tensor],
                   bases: BaseCache | None = None) -> nn.Module:
    """Base + class head + adapters, the adapters then merged into the weights, so inference costs
    exactly what the base model costs."""
    source = cfg.base_model if isinstance(cfg.base_model, dict) else {}
    if not can_reload_base(source):
        raise GptclfError(f"{directory}: the LoRA adapters' base model cannot be rebuilt ({source})",
                          hint="the run directory is damaged; retrain it")
    lora = LoRAConfig.from_dict(cfg.lora)
    n_layers = int(registry.config_from_dict(cfg.architecture).n_layers)
    # Every layer the adapters wrap gets parents of its own, whatever the file holds.
    wrapped = {f"trf_blocks.{i}.{t}.lora_A" for i in range(n_layers) for t in lora.targets}
    model = _base_with_head(directory, cfg, "LoRA adapters", bases, set(saved) | wrapped)
    apply_lora(model, lora)
    required = [k for k in model.state_dict() if ".lora_" in k] + _head_names(model)
    overlay(directory, model, saved, required)
    merge_lora(model)
    return model


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


def _with_tied(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights are stored once; fill the aliases from their twin."""
    for k in own:
        if k not in sd and k.endswith("out_head.weight") and "tok_emb.weight" in sd:
            sd[k] = sd["tok_emb.weight"]
    return sd
