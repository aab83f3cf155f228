"""The base model a run directory refers to instead of copying it.

Fine-tuning trains a few tensors (the last blocks, the final norm, the new class head, or
LoRA adapters) and leaves the rest of the backbone exactly as it was loaded, so a run
directory can store only what changed and name the base it came from -- a preset, a
packaged GGUF, a local directory or file -- with a fingerprint of its weights. This module
is the one home of that base: its identity (:class:`BaseWeights`, :func:`base_fingerprint`,
:func:`fingerprint_matches`), whether it can be named instead of copied
(:func:`why_not_referable`, :func:`base_reference`), what differs from it
(:func:`trained_tensors`), rebuilding and checking it (:func:`check_base_name`,
:func:`load_base`) and laying saved tensors over it (:func:`overlay`): the result is bit
for bit the classifier that was trained. Which tensors a run saves, and the config.json
keys that say so, are :mod:`.weights`, which uses these helpers for trained-only and LoRA
runs alike.

A base that cannot be rebuilt from its name (random initialisation, a hub repository that
is not a gptclf preset: gptclf never downloads what a model directory names) is saved
whole, as is every run with ``--self-contained``; ``gptclf export`` writes a
self-contained copy of any run.

The fingerprint is a sha256 of every tensor's bytes (names and shapes included): for
SmolLM2-135M's 538 MB a few percent of the time loading the model takes. Directories
and checkpoints written before it record a hash of a strided sample instead
(``sha256_sample``), which :func:`fingerprint_matches` still checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GptclfError

SELF_CONTAINED_HINT = "or load a self-contained copy made where the base was available ('gptclf export RUN OUT')"


# ---------------------------------------------------------------------------- fingerprints


def _backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def _is_base_tensor(name: str) -> bool:
    # The vocabulary head is replaced by the class head, and LoRA adapters are not the base.
    return not name.startswith(("out_head.", "window_pool.")) and ".lora_" not in name


def tensor_digest(t: torch.Tensor) -> str:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()


def tensor_digests(model: nn.Module) -> dict[str, str]:
    """sha256 of every base tensor (a tied weight once per name): what changed is then known."""
    return {name: tensor_digest(t) for name, t in _backbone(model).state_dict().items() if _is_base_tensor(name)}


def fingerprint_of(model: nn.Module, digests: dict[str, str]) -> dict[str, Any]:
    """``{"parameters", "sha256"}``: the count and one hash over every tensor's name, shape and digest."""
    sd = _backbone(model).state_dict()
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}:{tuple(sd[name].shape)}:{digests[name]}\n".encode())
    return {"parameters": sum(sd[n].numel() for n in digests), "sha256": h.hexdigest()}


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The identity of the base weights (call it before the head swap and any training)."""
    return fingerprint_of(model, tensor_digests(model))


def sampled_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The fingerprint of earlier versions: 4,096 evenly spaced values of every tensor."""
    h = hashlib.sha256()
    count = 0
    for name, t in sorted(_backbone(model).state_dict().items()):
        if not _is_base_tensor(name):
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(sample.numpy().tobytes())
        count += t.numel()
    return {"parameters": count, "sha256_sample": h.hexdigest()}


def fingerprint_matches(model: nn.Module, recorded: Any, computed: dict[str, Any] | None = None) -> bool:
    """Whether ``model`` (a base, before the head swap) has the weights ``recorded`` describes,
    by the method that wrote the record (``computed``: this model's :func:`base_fingerprint`)."""
    if not isinstance(recorded, dict) or not recorded:
        return False
    if "sha256" not in recorded and "sha256_sample" in recorded:
        return sampled_fingerprint(model) == recorded
    return (computed or base_fingerprint(model)) == recorded


@dataclass
class BaseWeights:
    """The base as it was loaded, before the head swap: per-tensor digests and the fingerprint."""

    digests: dict[str, str]
    fingerprint: dict[str, Any]

    @classmethod
    def of(cls, model: nn.Module) -> "BaseWeights":
        digests = tensor_digests(model)
        return cls(digests, fingerprint_of(model, digests))


# ---------------------------------------------------------------------------- naming it instead of copying it


def can_reload_base(source: dict[str, Any]) -> bool:
    """A base given by random initialisation cannot be rebuilt from its name."""
    return source.get("init", "pretrained") == "pretrained" and bool(source.get("name"))


def base_reference(source: dict[str, Any]) -> str:
    """The name to rebuild the base from: a local path made absolute, so the run directory
    still finds its base when loaded from another working directory."""
    name = str(source["name"])
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def why_not_referable(source: dict[str, Any]) -> str | None:
    """Why a run on this base must be saved whole (None: it can refer to its base)."""
    from ..models import registry

    if not can_reload_base(source):
        return "the base model was randomly initialised and cannot be rebuilt from its name"
    name = str(source["name"])
    if Path(name).expanduser().exists() or registry.find_preset(name) is not None:
        return None
    return (f"the base model {name!r} is a hub repository that is not a gptclf preset, and gptclf does not "
            "download what a model directory names")


def trained_tensors(model: nn.Module, base: BaseWeights) -> dict[str, torch.Tensor]:
    """What a trained-only directory stores: every tensor that trained (``requires_grad``),
    is new (the class head), or differs from the base as it was loaded."""
    out: dict[str, torch.Tensor] = {}
    params = dict(_backbone(model).named_parameters())
    for name, t in _backbone(model).state_dict().items():
        trained = name in params and params[name].requires_grad
        if trained or name not in base.digests or tensor_digest(t) != base.digests[name]:
            out[name] = t.detach().to("cpu").contiguous()
    return out


# ---------------------------------------------------------------------------- rebuilding it


def check_base_name(directory: Path, name: str, architecture: dict[str, Any], what: str = "LoRA adapters") -> None:
    """Before anything is loaded (or downloaded): a directory's base must be a local path or a
    gptclf preset (by name or hub repository) of the architecture it was trained on.
    config.json is the directory author's, so an arbitrary hub id would let it make gptclf
    fetch anything, multi-GB or attacker-chosen, just by being loaded."""
    from ..models import registry

    if Path(name).expanduser().exists():
        return
    found = registry.find_preset(name) or next(
        ((k, f, p) for f in registry.FAMILIES.values() for k, p in f.presets.items() if p.hub == name), None)
    if found is None and (name.startswith((".", "~", "/")) or Path(name).is_absolute()):
        raise GptclfError(f"{directory} holds {what} for the base model {name!r}, which could not be "
                          "loaded: the path does not exist",
                          hint=f"put the base model back at {name}, {SELF_CONTAINED_HINT}")
    if found is None:
        raise GptclfError(f"{directory} holds {what} for the base model {name!r}, which is neither a "
                          "local path nor a gptclf preset; gptclf does not download a base that a model "
                          "directory names",
                          hint="download the base yourself and point base_weights.name in config.json at its "
                               f"local path, {SELF_CONTAINED_HINT}")
    try:
        same = _same_shape(registry.config_from_dict(architecture).to_dict(), found[2].config.to_dict())
    except GptclfError:
        same = False
    if not same:
        raise GptclfError(f"{directory}: the base model {name!r} has a different architecture than the one "
                          f"the {what} were trained on", hint="the run directory is damaged or edited; retrain it")


def _same_shape(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # A GGUF stores eps as float32 (9.99999975e-06 for 1e-05): floats agree to a tolerance.
    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, (int, float)) and not isinstance(y, bool):
            return math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-12)
        return x == y

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def load_base(directory: Path, name: str, fingerprint: Any, architecture: dict[str, Any],
              what: str = "LoRA adapters") -> nn.Module:
    """The base model a directory names (vocabulary head still on), checked: a local path or a
    preset, the recorded architecture, the recorded fingerprint."""
    from ..loading import load_backbone
    from ..models import registry

    if not isinstance(fingerprint, dict) or not fingerprint:
        # Without it a different base would be used silently; a directory may come from anyone.
        raise GptclfError(f"{directory}: its config records no fingerprint of its base model's weights",
                          hint=f"the run directory is damaged or edited; retrain it, {SELF_CONTAINED_HINT}")
    check_base_name(directory, name, architecture, what)
    try:
        model = load_backbone(name, "pretrained").model
    except GptclfError as e:
        raise GptclfError(f"{directory} holds {what} for the base model {name!r}, which could not be "
                          f"loaded: {e.message}",
                          hint=e.hint or f"make the base model available, {SELF_CONTAINED_HINT}") from None
    if model.config.to_dict() != registry.config_from_dict(architecture).to_dict():
        raise GptclfError(f"{directory}: the base model {name!r} has a different architecture "
                          f"than the one the {what} were trained on",
                          hint="point the run at the same base model it was trained from")
    if not fingerprint_matches(model, fingerprint):
        raise GptclfError(f"{directory}: the base model {name!r} found now has different weights "
                          f"than the one the {what} were trained on (fingerprint mismatch)",
                          hint=f"restore the original base model at {name}, {SELF_CONTAINED_HINT}")
    return model


def overlay(directory: Path, model: nn.Module, saved: dict[str, torch.Tensor],
            required: list[str]) -> nn.Module:
    """Lay the saved tensors over the rebuilt base: every name known, every shape right, and
    every ``required`` name present."""
    own = model.state_dict()
    missing = [k for k in required if k not in saved]
    unexpected = [k for k in saved if k not in own]
    bad = [k for k in saved if k in own and tuple(saved[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise GptclfError(f"{directory}: model.safetensors does not match its config: "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]}",
                          hint="the directory mixes files of different runs; retrain or restore it")
    model.load_state_dict(saved, strict=False)
    return model


# ---------------------------------------------------------------------------- sharing it between runs


class BaseCache:
    """Bases already loaded in this process, by fingerprint: runs of the same base (``gptclf serve
    --model a=RUN --model b=RUN2``) lay their tensors over one copy (:func:`share_untouched`)
    instead of each loading its own. A base's own vocabulary head is dropped: every run swaps it."""

    def __init__(self) -> None:
        self._bases: dict[str, nn.Module] = {}

    def get(self, directory: Path, name: str, fingerprint: Any, architecture: dict[str, Any],
            what: str) -> nn.Module:
        from ..models import registry

        key = json.dumps(fingerprint, sort_keys=True)
        base = self._bases.get(key)
        if base is None:
            base = load_base(directory, name, fingerprint, architecture, what=what)
            base.out_head = nn.Identity()  # tied to the embedding, or a vocabulary-sized matrix nobody reads
            self._bases[key] = base
        elif base.config.to_dict() != registry.config_from_dict(architecture).to_dict():
            # Same weights, other settings (eps, rope): a different model after all.
            raise GptclfError(f"{directory}: its base model {name!r} has the weights of one already loaded "
                              "but a different architecture", hint="retrain the run, or serve it alone")
        return base

    def __len__(self) -> int:
        return len(self._bases)


def share_untouched(module: nn.Module, names: set[str], prefix: str = "") -> nn.Module:
    """A copy of ``module`` in which every submodule none of ``names`` (state-dict keys) falls in is
    the very same object, shared: only the modules a run changes get copies of their own, so
    loading the run's tensors into the copy never writes into the shared base. The root is always
    a copy (its head is swapped)."""
    if any(prefix + n in names for n in (*module._parameters, *module._buffers)):
        return copy.deepcopy(module)  # it holds a changed tensor itself: a Linear, a norm, an embedding
    touched = [n for n, m in module._modules.items()
               if m is not None and any(k.startswith(f"{prefix}{n}.") for k in names)]
    if not touched and prefix:
        return module
    clone = copy.copy(module)
    # copy.copy shares these dicts; a child set on the clone must not appear in the base.
    clone._modules, clone._parameters, clone._buffers = \
        dict(module._modules), dict(module._parameters), dict(module._buffers)
    for n in touched:
        clone._modules[n] = share_untouched(module._modules[n], names, f"{prefix}{n}.")
    return clone
