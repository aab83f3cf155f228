"""Inference: load a fine-tuned model directory and classify texts.

``Classifier.load(dir)`` needs nothing but the directory (config.json, model.safetensors
and, for non-GPT-2 tokenizers, tokenizer.json); it never unpickles anything.
Texts are batched by length (least padding) under ``torch.inference_mode``; results
come back in input order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import models
from .classifier import POOLINGS, SequenceClassifier, replace_head
from .data import collate, fit_to_length, sorted_batches, tokenize_texts
from .device import autocast, pad_multiple, pick_device, resolve_precision
from .errors import GptclfError
from .metrics import classification_report, most_confident_mistakes
from .tokenizer import tokenizer_from_config


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise GptclfError(f"{weights} is not a valid safetensors file ({type(e).__name__}: {e})",
                          hint="the file is truncated or corrupted; retrain or restore it") from None


def read_run_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not directory.exists():
        raise GptclfError(f"model directory {directory} does not exist",
                          hint="train one with 'gptclf train' (it writes runs/latest)")
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json", hint="is this a gptclf run directory?")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5,000-digit numbers, [[[[...
        raise GptclfError(f"{cfg_path} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(cfg, dict) or not str(cfg.get("format", "")).startswith("gptclf/"):
        raise GptclfError(f"{cfg_path} is not a gptclf model config",
                          hint="pass the directory written by 'gptclf train'")
    for key in ("architecture", "labels", "tokenizer", "max_length", "pooling"):
        if key not in cfg:
            raise GptclfError(f"{cfg_path} lacks {key!r}")
    labels = cfg["labels"]
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)):
        raise GptclfError(f"{cfg_path}: 'labels' must list at least two distinct non-empty strings")
    ml = cfg["max_length"]
    if isinstance(ml, bool) or not isinstance(ml, int) or ml < 1:
        raise GptclfError(f"{cfg_path}: max_length {ml!r} is not a positive integer")
    if cfg["pooling"] not in POOLINGS:
        raise GptclfError(f"{cfg_path}: pooling {cfg['pooling']!r} is not one of {list(POOLINGS)}")
    if cfg.get("padding", "dynamic") not in ("dynamic", "longest"):
        raise GptclfError(f"{cfg_path}: padding {cfg.get('padding')!r} is not 'dynamic' or 'longest'")
    if not isinstance(cfg["tokenizer"], dict):
        raise GptclfError(f"{cfg_path}: 'tokenizer' must be a JSON object")
    return cfg


def _file_shapes(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file declares, as meta tensors: names and shapes, no data read."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise GptclfError(f"{weights} is not a valid safetensors file ({type(e).__name__}: {e})",
                          hint="the file is truncated or corrupted; retrain or restore it") from None


class Classifier:
    """A fine-tuned text classifier."""

    def __init__(self, model: SequenceClassifier, tokenizer: Any, config: dict[str, Any],
                 device: torch.device, precision: str = "fp32", directory: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(config["labels"])
        self.max_length: int = int(config["max_length"])
        self.pad_to: int | None = self.max_length if config.get("padding") == "longest" else None
        self.device = device
        self.precision = precision
        self.directory = directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", precision: str = "fp32",
             quantize: str | None = None) -> "Classifier":
        from .weights import _load_plugins, state_dict_problems

        _load_plugins()
        directory = Path(directory).expanduser()
        cfg = read_run_config(directory)
        arch = models.config_from_dict(cfg["architecture"])
        if cfg["max_length"] > arch.context_length:
            raise GptclfError(f"{directory}: max_length {cfg['max_length']} is longer than the model's "
                              f"context of {arch.context_length} tokens")
        weights = directory / "model.safetensors"
        if not weights.exists():
            raise GptclfError(f"{directory} has no model.safetensors")
        if cfg.get("lora"):
            # Adapters only: rebuild the base model it names (checked against its fingerprint)
            # and merge them into it.
            from .lora import load_adapter_classifier

            backbone = load_adapter_classifier(directory, cfg, _read_safetensors(weights))
        else:
            # Compare config and file on the meta device first: a config whose sizes disagree
            # with the weights (or are absurd) is refused before any memory is allocated.
            with torch.device("meta"):
                skeleton = replace_head(models.ARCHITECTURES[arch.arch][1](arch), len(cfg["labels"]))
            declared = _file_shapes(weights)
            own = skeleton.state_dict()
            for k in own:
                if k not in declared and k.endswith("out_head.weight") and "tok_emb.weight" in declared:
                    declared[k] = declared["tok_emb.weight"]
            problems = state_dict_problems(own, declared)
            if problems:
                raise GptclfError(f"{directory}: config.json and model.safetensors disagree: {problems}",
                                  hint="the directory mixes files of different models; retrain or restore it")
            backbone = models.build_model(arch)
            replace_head(backbone, len(cfg["labels"]))
            sd = _read_safetensors(weights)
            # Tied weights are stored once; fill the aliases from their twin.
            for k in backbone.state_dict():
                if k not in sd and k.endswith("out_head.weight") and "tok_emb.weight" in sd:
                    sd[k] = sd["tok_emb.weight"]
            backbone.load_state_dict(sd, strict=True)  # names and shapes were checked above
        tokenizer = tokenizer_from_config(cfg["tokenizer"], directory)
        if tokenizer.vocab_size > arch.vocab_size:
            raise GptclfError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"model's embedding only {arch.vocab_size}")
        if not 0 <= tokenizer.pad_id < arch.vocab_size:
            raise GptclfError(f"{directory}: pad id {tokenizer.pad_id} is outside the vocabulary "
                              f"of {arch.vocab_size} tokens")
        dev = pick_device(device)
        prec = resolve_precision(precision, dev)
        model = SequenceClassifier(backbone, cfg["pooling"], causal=cfg.get("causal_mask", True))
        for p in model.parameters():
            p.requires_grad = False
        if quantize:
            from .quantize import quantize_model

            model = quantize_model(model, quantize)
        return cls(model.to(dev), tokenizer, cfg, dev, prec, directory)

    # ------------------------------------------------------------------ prediction

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as at training: the run's template (if any) around each text, cut to max_length."""
        ids, pre, post = tokenize_texts(self.tokenizer, texts, self.config.get("template"))
        return fit_to_length(ids, pre, post, self.max_length, "the model's input")

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[len(texts), num_classes]`` in input order."""
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        if batch_size < 1:
            raise GptclfError(f"batch size must be at least 1, not {batch_size}")
        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not ids:
            return out
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        for idx in sorted_batches(lengths, batch_size):
            batch, lens = collate([ids[i] for i in idx], self.tokenizer.pad_id, self.pad_to,
                                  pad_multiple(self.device))
            with autocast(self.device, self.precision):
                logits = self.model(batch.to(self.device), lens.to(self.device)).float()
            out[idx] = torch.softmax(logits, -1).cpu().numpy()
        return out

    def predict(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"label": ..., "score": p(label), "scores": {label: p}}]``, one per text, in order."""
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else list(texts), batch_size)
        return [self._result(p) for p in probs]

    def _result(self, p: np.ndarray) -> dict[str, Any]:
        k = int(p.argmax())
        return {"label": self.labels[k], "score": float(p[k]),
                "scores": {lab: float(v) for lab, v in zip(self.labels, p)}}

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], batch_size: int = 32,
                 mistakes: int = 0) -> dict[str, Any]:
        """Accuracy, loss, per-class P/R/F1, confusion matrix, ROC-AUC (binary) and, with
        ``mistakes=k``, the k wrong predictions the model was surest of."""
        unknown = sorted(set(labels) - set(self.labels))
        if unknown:
            raise GptclfError(f"labels {unknown} are not among the model's labels {self.labels}",
                              hint="check --label-column, or evaluate on data with the training labels")
        index = {lab: i for i, lab in enumerate(self.labels)}
        probs = self.predict_proba(list(texts), batch_size)
        y = np.array([index[lab] for lab in labels], dtype=np.int64)
        report = classification_report(y, probs.argmax(1), self.labels, probs)
        report["loss"] = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else float("nan")
        if mistakes:
            report["mistakes"] = most_confident_mistakes(list(texts), y, probs, self.labels, mistakes)
        return report
