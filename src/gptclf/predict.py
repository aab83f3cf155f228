"""Inference: load a fine-tuned model directory and classify texts.

``Classifier.load(dir)`` needs nothing but the directory (config.json, model.safetensors
and, for non-GPT-2 tokenizers, tokenizer.json); it never unpickles anything.
Texts are batched by length (least padding) under ``torch.inference_mode``; results
come back in input order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import models
from .classifier import SequenceClassifier, replace_head
from .data import DataWarning, collate, sorted_batches
from .device import autocast, pick_device, resolve_precision
from .errors import GptclfError
from .metrics import classification_report
from .tokenizer import tokenizer_from_config


def read_run_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not directory.exists():
        raise GptclfError(f"model directory {directory} does not exist",
                          hint="train one with 'gptclf train' (it writes runs/latest)")
    if not cfg_path.exists():
        raise GptclfError(f"{directory} has no config.json", hint="is this a gptclf run directory?")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptclfError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or not str(cfg.get("format", "")).startswith("gptclf/"):
        raise GptclfError(f"{cfg_path} is not a gptclf model config",
                          hint="pass the directory written by 'gptclf train'")
    for key in ("architecture", "labels", "tokenizer", "max_length", "pooling"):
        if key not in cfg:
            raise GptclfError(f"{cfg_path} lacks {key!r}")
    if not isinstance(cfg["labels"], list) or len(cfg["labels"]) < 2:
        raise GptclfError(f"{cfg_path}: 'labels' must list at least two labels")
    return cfg


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
        from safetensors import safe_open

        from .weights import _load_plugins, state_dict_problems

        _load_plugins()
        directory = Path(directory).expanduser()
        cfg = read_run_config(directory)
        arch = models.config_from_dict(cfg["architecture"])
        weights = directory / "model.safetensors"
        if not weights.exists():
            raise GptclfError(f"{directory} has no model.safetensors")
        try:
            with safe_open(str(weights), framework="pt") as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise GptclfError(f"{weights} is not a valid safetensors file ({e})",
                              hint="the file is truncated or corrupted; retrain or restore it") from None
        if cfg.get("lora"):
            # Adapters only: rebuild the base model it names and merge them into it.
            from .lora import load_adapter_classifier

            backbone = load_adapter_classifier(directory, cfg, sd)
        else:
            backbone = models.build_model(arch)
            replace_head(backbone, len(cfg["labels"]))
            own = backbone.state_dict()
            # Tied weights are stored once; fill the aliases from their twin.
            for k in own:
                if k not in sd and k.endswith("out_head.weight") and "tok_emb.weight" in sd:
                    sd[k] = sd["tok_emb.weight"]
            problems = state_dict_problems(own, sd)
            if problems:
                raise GptclfError(f"{directory}: config.json and model.safetensors disagree: {problems}",
                                  hint="the directory mixes files of different models; retrain or restore it")
            backbone.load_state_dict(sd, strict=True)
        tokenizer = tokenizer_from_config(cfg["tokenizer"], directory)
        if tokenizer.vocab_size > arch.vocab_size:
            raise GptclfError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"model's embedding only {arch.vocab_size}")
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
        ids = self.tokenizer.encode_batch(list(texts))
        long = 0
        for i, t in enumerate(ids):
            if not t:
                ids[i] = [self.tokenizer.pad_id]
            elif len(t) > self.max_length:
                ids[i] = t[: self.max_length]
                long += 1
        if long:
            warnings.warn(f"{long} text(s) longer than the model's {self.max_length} tokens were "
                          "truncated", DataWarning, stacklevel=3)
        return ids

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[len(texts), num_classes]`` in input order."""
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not ids:
            return out
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        for idx in sorted_batches(lengths, batch_size):
            batch, lens = collate([ids[i] for i in idx], self.tokenizer.pad_id, self.pad_to)
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

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], batch_size: int = 32) -> dict[str, Any]:
        unknown = sorted(set(labels) - set(self.labels))
        if unknown:
            raise GptclfError(f"labels {unknown} are not among the model's labels {self.labels}",
                              hint="check --label-column, or evaluate on data with the training labels")
        index = {lab: i for i, lab in enumerate(self.labels)}
        probs = self.predict_proba(list(texts), batch_size)
        y = np.array([index[lab] for lab in labels], dtype=np.int64)
        report = classification_report(y, probs.argmax(1), self.labels, probs)
        report["loss"] = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else float("nan")
        return report
