"""Reading a fine-tuned model directory: its config.json, its weights, its tokenizer.

:func:`read_run_config` checks config.json (:class:`gptclf.config.RunConfig`);
:func:`load_run` reads the whole directory into a :class:`LoadedRun`: the config, the
backbone with its class head (:func:`gptclf.rundir.weights.load_classifier_backbone`, for
any kind of run: full, trained-only or LoRA adapters) and the tokenizer, each checked
against the architecture config.json names. It is the one place that decides whether a
directory loads; :meth:`gptclf.inference.classifier.Classifier.load` only wraps what it
returns. Nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..config import RunConfig
from ..errors import GptclfError
from ..files import file_inside, read_json
from ..models import registry
from ..tokenizers import tokenizer_from_config
from ..tokenizers.base import Tokenizer
from .base import BaseCache
from .weights import load_classifier_backbone


def read_run_config(directory: str | Path) -> RunConfig:
    directory = Path(directory).expanduser()
    cfg_path = file_inside(directory, "config.json")
    if not directory.exists():
        raise GptclfError(f"model directory {directory} does not exist",
                          hint="train one with 'gptclf train' (it writes runs/latest)")
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json", hint="is this a gptclf run directory?")
    return RunConfig.from_json(read_json(cfg_path), str(cfg_path))


@dataclass
class LoadedRun:
    """A run directory read and checked: what a classifier is built from."""

    config: RunConfig
    backbone: nn.Module  # with its class head and the run's trained weights, on the CPU
    tokenizer: Tokenizer


def load_run(directory: str | Path, bases: BaseCache | None = None) -> LoadedRun:
    """The config, backbone and tokenizer of a run directory, checked against each other: the
    architecture (before anything is allocated), max_length against the context, the weights
    against the architecture, the tokenizer's vocabulary and pad id against the embedding.
    ``bases``: share the base with the other runs loaded through it (:class:`.base.BaseCache`)."""
    directory = Path(directory).expanduser()
    cfg = read_run_config(directory)
    arch = registry.config_from_dict(cfg.architecture)
    if cfg.max_length > arch.context_length:
        raise GptclfError(f"{directory}: max_length {cfg.max_length} is longer than the model's "
                          f"context of {arch.context_length} tokens")
    backbone = load_classifier_backbone(directory, cfg, bases)
    tokenizer = tokenizer_from_config(cfg.tokenizer, directory)
    check_tokenizer(directory, tokenizer, arch.vocab_size)
    return LoadedRun(cfg, backbone, tokenizer)


def check_tokenizer(directory: Path, tokenizer: Tokenizer, vocab_size: int) -> None:
    """The tokenizer's ids, pad id included, all index the model's embedding of ``vocab_size``."""
    if tokenizer.vocab_size > vocab_size:
        raise GptclfError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                          f"model's embedding only {vocab_size}")
    if not 0 <= tokenizer.pad_id < vocab_size:
        raise GptclfError(f"{directory}: pad id {tokenizer.pad_id} is outside the vocabulary "
                          f"of {vocab_size} tokens")
