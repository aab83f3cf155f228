"""Hugging Face checkpoints: a local directory (``config.json`` + safetensors) or a hub
repository, downloaded through ``huggingface_hub``. Weights are only ever read from
safetensors: nothing is unpickled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import GptclfError
from ..files import file_inside, plain_name, read_json, read_json_object
from ..models import registry
from ..models.family import TOKENIZER_GPT2_BPE
from ..tokenizers.base import Tokenizer
from .backbone import Backbone
from .state_dict import load_converted_state_dict


# A Hugging Face config.json is a few kilobytes; one that claims more is not one (or is /dev/zero).
HF_CONFIG_BYTES = 1 << 20


def download_hf(repo_id: str, weights: bool = True) -> Path:
    """Fetch config.json, the tokenizer files and (with ``weights``) the safetensors of a hub
    repository into the Hugging Face cache (resumable; ``HF_HUB_OFFLINE`` honoured)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id,
            allow_patterns=["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
            + (["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"] if weights else []),
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

    # A directory may come from someone else: no file of it is read through a link out of it.
    single = file_inside(directory, "model.safetensors")
    index = file_inside(directory, "model.safetensors.index.json")
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            shards = set(read_json(index)["weight_map"].values())
        except (KeyError, TypeError, AttributeError) as e:
            raise GptclfError(f"{index} is not a valid safetensors index ({type(e).__name__}: {e})") from None
        for s in shards:
            # The index names files inside the directory, never '../' or absolute paths.
            if not plain_name(s):
                raise GptclfError(f"{index} names the shard {str(s)[:100]!r}, which is not a file in {directory}")
        files = [file_inside(directory, s) for s in sorted(shards)]
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


def load_hf_dir(directory: Path, init: str, source: dict[str, Any]) -> Backbone:
    cfg_path = file_inside(directory, "config.json")
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json",
                          hint="a model directory needs config.json + model.safetensors (Hugging Face format)")
    hf_cfg = read_json_object(cfg_path, HF_CONFIG_BYTES)
    if "gptclf" in hf_cfg or str(hf_cfg.get("format", "")).startswith("gptclf/"):
        raise GptclfError(f"{directory} is a fine-tuned gptclf classifier, not a backbone",
                          hint="use it with 'gptclf predict/evaluate --model DIR'")
    model_type = hf_cfg.get("model_type")
    fam = registry.family_for_hf(model_type)
    if fam is None:
        raise GptclfError(f"{cfg_path}: model_type {model_type!r} is not supported",
                          hint="supported: " + ", ".join(registry.hf_model_types()))
    cfg = _config_from_hf(fam, hf_cfg, cfg_path)
    registry.check_config(cfg, where=str(cfg_path), spell=hf_spelling(hf_cfg))
    model = registry.build_model(cfg, initialise=init != "pretrained")  # the file fills every weight
    if init == "pretrained":
        try:
            sd = fam.convert_hf(read_safetensors_dir(directory), cfg)
        except KeyError as e:  # the converter reads each tensor the config's sizes call for
            raise GptclfError(f"{directory}: the weights have no tensor {e.args[0]!r}, which {cfg_path.name} "
                              f"calls for ({cfg.n_layers} layers)",
                              hint="config.json and the safetensors come from different models, or a "
                                   "shard is missing") from None
        load_converted_state_dict(model, sd, str(directory))
    return Backbone(model, family_tokenizer(fam, directory), {**source, "init": init, "model_type": model_type})




# The Hugging Face keys of the fields check_config names, so its message names the file's key.
HF_SPELLING = {"n_layers": ("num_hidden_layers", "n_layer"), "emb_dim": ("hidden_size", "n_embd"),
               "n_heads": ("num_attention_heads", "n_head"), "n_kv_heads": ("num_key_value_heads",),
               "hidden_dim": ("intermediate_size",), "context_length": ("max_position_embeddings", "n_positions"),
               "norm_eps": ("rms_norm_eps",), "layer_norm_eps": ("layer_norm_epsilon",),
               "attn_softcap": ("attn_logit_softcapping",), "final_softcap": ("final_logit_softcapping",),
               "rope_local_theta": ("rope_local_base_freq",)}


def hf_spelling(hf_cfg: dict[str, Any]) -> dict[str, str]:
    """Field -> the key this config.json spells it with (of those it has)."""
    return {f: k for f, keys in HF_SPELLING.items() for k in keys if k in hf_cfg}


def _config_from_hf(fam: Any, hf_cfg: dict[str, Any], cfg_path: Path) -> Any:
    """The family's config from config.json; what it lacks or cannot read, named with the file."""
    try:
        return fam.config_from_hf(hf_cfg)
    except KeyError as e:
        raise GptclfError(f"{cfg_path} lacks {e.args[0]!r}", hint="is it a complete Hugging Face config.json?") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise GptclfError(f"{cfg_path}: invalid value ({type(e).__name__}: {e})") from None
    except GptclfError as e:
        raise GptclfError(f"{cfg_path}: {e.message}", hint=e.hint) from None


def family_tokenizer(fam: Any, directory: Path | None) -> Tokenizer:
    """The tokenizer a family uses: GPT-2's packaged BPE, or the directory's tokenizer.json."""
    if fam.tokenizer == TOKENIZER_GPT2_BPE:
        from ..tokenizers.gpt2 import GPT2Tokenizer

        return GPT2Tokenizer()
    from ..tokenizers.hf import HFTokenizer

    if directory is None:
        raise GptclfError(f"a {fam.arch} model needs the tokenizer.json of its directory")
    return HFTokenizer.from_hf_dir(directory)
