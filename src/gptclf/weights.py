"""Find, download and load backbone weights: ``load_model(name_or_path, init)``.

A backbone can be named by

* a preset (``gpt2-small`` .. ``gpt2-xl`` and their aliases): its Hugging Face
  safetensors are fetched through ``huggingface_hub`` (its cache, resumable downloads,
  ``HF_HUB_OFFLINE`` honoured);
* a local Hugging Face-format directory (``config.json`` + ``model.safetensors``, or a
  sharded ``model.safetensors.index.json``), or a hub repository id ``owner/name``;
* any name another module registers with :func:`register_resolver` (the GGUF backbones).

``init="random"`` builds the architecture with fresh weights and downloads nothing.
Weights are only ever read from safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import models
from .errors import GptclfError
from .models import gpt2
from .tokenizer import GPT2Tokenizer, Tokenizer


@dataclass
class Backbone:
    """A language model ready for the head swap, with the tokenizer that goes with it."""

    model: nn.Module
    tokenizer: Tokenizer
    source: dict[str, Any] = field(default_factory=dict)  # where it came from, for config.json


# HF ``model_type`` -> (config from HF config.json, state-dict converter, tokenizer loader).
HFConverter = tuple[Callable[[dict], Any], Callable[[dict, Any], dict], Callable[[Path], Tokenizer]]
HF_CONVERTERS: dict[str, HFConverter] = {
    "gpt2": (gpt2.GPT2Config.from_hf, gpt2.convert_hf_state_dict, lambda _d: GPT2Tokenizer()),
}

# Extra name resolvers (e.g. "smollm2-135m" -> packaged GGUF). Each returns a Backbone or
# None when the name is not theirs.
Resolver = Callable[[str, str], "Backbone | None"]
_RESOLVERS: list[Resolver] = []


def register_resolver(fn: Resolver) -> None:
    _RESOLVERS.append(fn)


def known_model_names() -> list[str]:
    names = list(gpt2.PRESETS) + list(gpt2.ALIASES)
    for fn in _RESOLVERS:
        names += list(getattr(fn, "names", []))
    return sorted(set(names))


def check_model_name(name_or_path: str) -> None:
    """Fail fast (before any data is read) on a name that cannot resolve to a model."""
    _load_plugins()
    low = name_or_path.lower()
    if low in {n.lower() for n in known_model_names()} or Path(name_or_path).expanduser().exists():
        return
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")) and name_or_path.count("/") == 1:
        return  # a hub id: only the hub can tell
    raise GptclfError(f"unknown model {name_or_path!r}",
                      hint="use one of: " + ", ".join(known_model_names())
                      + "; a local Hugging Face directory; or a hub id like openai-community/gpt2")


def load_model(name_or_path: str, init: str = "pretrained") -> nn.Module:
    """The language model (vocabulary head still on): ``model(ids) -> [batch, seq, vocab]``."""
    return load_backbone(name_or_path, init).model


def load_backbone(name_or_path: str, init: str = "pretrained") -> Backbone:
    if init not in ("pretrained", "random"):
        raise GptclfError(f"--init must be 'pretrained' or 'random', not {init!r}")
    _load_plugins()
    for fn in _RESOLVERS:
        found = fn(name_or_path, init)
        if found is not None:
            return found
    key = gpt2.ALIASES.get(name_or_path.lower(), name_or_path.lower())
    if key in gpt2.PRESETS:
        if init == "random":
            cfg = gpt2.GPT2Config(**{k: v for k, v in gpt2.PRESETS[key].to_dict().items() if k != "arch"})
            return Backbone(models.build_model(cfg), GPT2Tokenizer(),
                            {"name": key, "init": "random"})
        return _load_hf_dir(_download_hf(gpt2.HF_REPOS[key]), init, {"name": key, "hub": gpt2.HF_REPOS[key]})
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_hf_dir(path, init, {"name": str(path)})
    if path.exists():
        raise GptclfError(f"{path} is a file, not a model directory",
                          hint="pass a Hugging Face-format directory (config.json + model.safetensors)")
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")) and name_or_path.count("/") == 1:
        return _load_hf_dir(_download_hf(name_or_path), init, {"name": name_or_path, "hub": name_or_path})
    raise GptclfError(f"unknown model {name_or_path!r}",
                      hint="use one of: " + ", ".join(known_model_names())
                      + "; a local Hugging Face directory; or a hub id like openai-community/gpt2")


def _load_plugins() -> None:
    # Architectures beyond GPT-2 register themselves on import.
    from . import plugins  # noqa: F401


def _download_hf(repo_id: str) -> Path:
    """Fetch config.json + safetensors of a hub repository into the HF cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id,
            allow_patterns=["config.json", "model.safetensors", "model.safetensors.index.json",
                            "model-*.safetensors", "tokenizer.json", "tokenizer_config.json",
                            "generation_config.json"],
        ))
    except Exception as e:  # network down, offline mode, missing repo, ... all mean the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else \
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'download failed'}"
        raise GptclfError(
            f"could not get the weights of {repo_id!r} from the Hugging Face hub ({why})",
            hint="with no network: train the offline backbone (--model smollm2-135m), point --model at "
                 "a local Hugging Face directory, or use --init random; with a network, check the "
                 "name and retry (downloads resume).",
        ) from None


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards named in its index."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GptclfError(f"{index} is not a valid safetensors index ({type(e).__name__}: {e})") from None
        for s in shards:
            # The index names files inside the directory, never '../' or absolute paths.
            if not isinstance(s, str) or not s or "/" in s or "\\" in s or s in (".", ".."):
                raise GptclfError(f"{index} names the shard {s!r}, which is not a file in {directory}")
        files = [directory / s for s in sorted(shards)]
    else:
        raise GptclfError(f"no model.safetensors in {directory}",
                          hint="gptclf reads safetensors only (never pickles); save the model with "
                               "save_pretrained(..., safe_serialization=True)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except Exception as e:
            raise GptclfError(f"{f} is not a valid safetensors file ({e})",
                              hint="the file is truncated or corrupted: delete it and download it again") from None
    return sd


def _load_hf_dir(directory: Path, init: str, source: dict[str, Any]) -> Backbone:
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json",
                          hint="a model directory needs config.json + model.safetensors (Hugging Face format)")
    try:
        hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise GptclfError(f"{cfg_path} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(hf_cfg, dict):
        raise GptclfError(f"{cfg_path} is not a JSON object")
    if "gptclf" in hf_cfg or str(hf_cfg.get("format", "")).startswith("gptclf/"):
        raise GptclfError(f"{directory} is a fine-tuned gptclf classifier, not a backbone",
                          hint="use it with 'gptclf predict/evaluate --model DIR'")
    model_type = hf_cfg.get("model_type")
    if model_type not in HF_CONVERTERS:
        raise GptclfError(f"{cfg_path}: model_type {model_type!r} is not supported",
                          hint="supported: " + ", ".join(sorted(HF_CONVERTERS)))
    make_cfg, convert, make_tok = HF_CONVERTERS[model_type]
    try:
        cfg = make_cfg(hf_cfg)
    except KeyError as e:
        raise GptclfError(f"{cfg_path} lacks {e.args[0]!r}", hint="is it a complete Hugging Face config.json?") from None
    except (TypeError, ValueError) as e:
        raise GptclfError(f"{cfg_path}: invalid value ({type(e).__name__}: {e})") from None
    models.check_config(cfg)
    model = models.build_model(cfg)
    if init == "pretrained":
        sd = convert(read_safetensors_dir(directory), cfg)
        load_converted_state_dict(model, sd, str(directory))
    return Backbone(model, make_tok(directory), {**source, "init": init, "model_type": model_type})


def load_converted_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Load with a clear message when names or shapes disagree."""
    tok = getattr(model, "tok_emb", None)
    head = getattr(model, "out_head", None)
    if (tok is not None and head is not None and head.weight is tok.weight
            and "out_head.weight" in sd and not torch.equal(sd["out_head.weight"], sd["tok_emb.weight"])):
        # Checkpoint has an untied head: give the model its own parameter before loading.
        model.out_head.weight = nn.Parameter(torch.empty_like(tok.weight))
    detail = state_dict_problems(model.state_dict(), sd)
    if detail:
        raise GptclfError(f"weights in {where} do not match the architecture: {detail}",
                          hint="the config and the weights come from different models")
    model.load_state_dict(sd, strict=True)


def state_dict_problems(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str:
    """What differs between a model's tensors and a file's: names and shapes ('' if nothing)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
           if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing tensors {missing[:3]}")
    if unexpected:
        parts.append(f"unexpected tensors {unexpected[:3]}")
    if bad:
        parts.append("shape mismatch " + ", ".join(f"{k}: file {a} vs config {b}" for k, a, b in bad[:3]))
    return "; ".join(parts)
