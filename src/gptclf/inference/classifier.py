"""Inference: load a fine-tuned model directory and classify texts.

``Classifier.load(dir)`` needs nothing but the directory (config.json, model.safetensors
and, for non-GPT-2 tokenizers, tokenizer.json); it never unpickles anything.
Texts are batched by length (least padding) under ``torch.inference_mode``; results
come back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import RunConfig
from ..data.batching import collate, sorted_batches
from ..data.encoding import fit_to_length, tokenize_texts
from ..device import autocast, pad_multiple, pick_device, resolve_precision
from ..errors import GptclfError
from ..metrics import classification_report, most_confident_mistakes
from ..models import registry
from ..models.classifier import SequenceClassifier
from ..rundir.load import load_classifier_backbone, read_run_config
from ..tokenizers import tokenizer_from_config


def prediction(labels: Sequence[str], p: np.ndarray, truncated: bool = False, empty: bool = False) -> dict[str, Any]:
    """One prediction as every path reports it (Python, ``predict --json``, HTTP)."""
    k = int(p.argmax())
    return {"label": labels[k], "score": float(p[k]), "scores": {lab: float(v) for lab, v in zip(labels, p)},
            "truncated": bool(truncated), "empty": bool(empty)}


class Classifier:
    """A fine-tuned text classifier."""

    def __init__(self, model: SequenceClassifier, tokenizer: Any, run_config: RunConfig | dict[str, Any],
                 device: torch.device, precision: str = "fp32", directory: Path | None = None) -> None:
        if not isinstance(run_config, RunConfig):  # the fields as a dict (labels, max_length, ...)
            run_config = RunConfig.for_model(model, tokenizer, **{"pooling": model.pooling, **run_config})
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.run_config = run_config
        self.config: dict[str, Any] = run_config.to_json()  # config.json as a dict
        self.labels: list[str] = list(run_config.labels)
        self.max_length: int = int(run_config.max_length)
        self.pad_to: int | None = self.max_length if run_config.padding == "longest" else None
        self.device = device
        self.precision = precision
        self.directory = directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", precision: str = "fp32",
             quantize: str | None = None) -> "Classifier":
        """A model directory written by ``gptclf train`` (or ``gptclf export``), ready to predict."""
        directory = Path(directory).expanduser()
        cfg = read_run_config(directory)
        arch = registry.config_from_dict(cfg.architecture)
        if cfg.max_length > arch.context_length:
            raise GptclfError(f"{directory}: max_length {cfg.max_length} is longer than the model's "
                              f"context of {arch.context_length} tokens")
        backbone = load_classifier_backbone(directory, cfg, arch)
        tokenizer = tokenizer_from_config(cfg.tokenizer, directory)
        if tokenizer.vocab_size > arch.vocab_size:
            raise GptclfError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"model's embedding only {arch.vocab_size}")
        if not 0 <= tokenizer.pad_id < arch.vocab_size:
            raise GptclfError(f"{directory}: pad id {tokenizer.pad_id} is outside the vocabulary "
                              f"of {arch.vocab_size} tokens")
        dev = pick_device(device)
        prec = resolve_precision(precision, dev)
        model = SequenceClassifier(backbone, cfg.pooling, causal=cfg.causal_mask)
        for p in model.parameters():
            p.requires_grad = False
        if quantize:
            from .quantize import quantize_model

            model = quantize_model(model, quantize)
        return cls(model.to(dev), tokenizer, cfg, dev, prec, directory)

    # ------------------------------------------------------------------ prediction

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as at training: the run's template (if any) around each text, cut to max_length."""
        return self._encode(texts)[0]

    def _encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        ids, pre, post = tokenize_texts(self.tokenizer, texts, self.run_config.template)
        room = self.max_length - len(pre) - len(post)
        truncated = [len(t) > room for t in ids]
        return fit_to_length(ids, pre, post, self.max_length, "the model's input"), truncated

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is longer than the model's ``max_length`` and gets cut (what every
        prediction path reports as ``truncated``)."""
        return self._encode(list(texts))[1]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[len(texts), num_classes]`` in input order."""
        return self._predict(texts, batch_size)[0]

    @torch.inference_mode()
    def _predict(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, list[bool]]:
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        if batch_size < 1:
            raise GptclfError(f"batch size must be at least 1, not {batch_size}")
        ids, truncated = self._encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not ids:
            return out, truncated
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        for idx in sorted_batches(lengths, batch_size):
            batch, lens = collate([ids[i] for i in idx], self.tokenizer.pad_id, self.pad_to,
                                  pad_multiple(self.device))
            with autocast(self.device, self.precision):
                logits = self.model(batch.to(self.device), lens.to(self.device)).float()
            out[idx] = torch.softmax(logits, -1).cpu().numpy()
        return out, truncated

    def predict(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"label", "score": p(label), "scores": {label: p}, "truncated", "empty"}]``, one per
        text, in order. ``truncated``: the text was longer than ``max_length`` tokens and only its
        start was read. ``empty``: the text has nothing but whitespace, so the label is only the
        model's prior (every empty text gets the same one): treat it as no answer."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs, truncated = self._predict(texts, batch_size)
        return [prediction(self.labels, p, cut, not t.strip()) for p, cut, t in zip(probs, truncated, texts)]

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
