"""Inference: load a fine-tuned model directory and classify texts.

``Classifier.load(dir)`` needs nothing but the directory (config.json, model.safetensors
and, for non-GPT-2 tokenizers, tokenizer.json) and, for a run that stores only its
trained tensors (the default), the base model it names; it never unpickles anything.
Texts are batched by length (least padding), at most ``batch_size`` texts and
``max_batch_tokens`` padded tokens a batch (on CUDA: at least ``GPU_BATCH_TOKENS``),
under ``torch.inference_mode``; results come back in input order.

Two backends compute the same probabilities from the same token ids:

* ``torch``: the model of :mod:`gptclf.models` (any device, fp32/bf16/fp16);
* ``onnxruntime``: the graph of ``gptclf export --format onnx`` (CPU), fp32 or int8. A run
  directory is exported once into the cache on first use; an exported directory is used
  as it is. ``quantize="int8"`` always runs here (ONNX Runtime's dynamic int8), the
  maintained replacement for ``torch.ao.quantization``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import tasks
from ..config import RunConfig
from ..data.batching import budget_batches, collate, sorted_batches
from ..data.encoding import tokenize_texts
from ..data.long_text import Fitted, fit_texts
from ..device import autocast, pad_multiple, pick_device, resolve_precision
from ..errors import GptclfError, TextError, is_interrupt
from ..graphs import Shapes, StaticForward, capture_available
from ..models import registry
from ..models.classifier import SequenceClassifier
from ..rundir.base import BaseCache
from ..rundir.load import check_tokenizer, load_run, read_run_config
from ..tokenizers import tokenizer_from_config


BACKENDS = ("auto", "torch", "onnxruntime")
STATIC_SHAPES = ("auto", "on", "off")
# On CUDA a prediction batch holds at least this many padded tokens (2,048 SMS-length texts):
# small batches leave the GPU waiting on the host.
GPU_BATCH_TOKENS = 65536
# Padded tokens per forward pass (rows x the batch's longest text), on top of the batch size:
# long texts go a few at a time instead of padding 31 shorter ones to their width.
MAX_BATCH_TOKENS = 2048


class Classifier:
    """A fine-tuned text classifier."""

    def __init__(self, model: SequenceClassifier | None, tokenizer: Any, run_config: RunConfig | dict[str, Any],
                 device: torch.device, precision: str = "fp32", directory: Path | None = None,
                 session: Any = None, static_shapes: str = "off") -> None:
        if not isinstance(run_config, RunConfig):  # the fields as a dict (labels, max_length, ...)
            run_config = RunConfig.for_model(model, tokenizer, **{"pooling": model.pooling, **run_config})
        self.model = model.eval() if model is not None else None
        self.session = session  # an OnnxSession for the onnxruntime backend
        self.backend = "onnxruntime" if session is not None else "torch"
        self.tokenizer = tokenizer
        self.run_config = run_config
        self.config: dict[str, Any] = run_config.to_json()  # config.json as a dict
        self.labels: list[str] = list(run_config.labels)
        self.max_length: int = int(run_config.max_length)
        # How texts longer than max_length are read (gptclf.data.long_text): as at training.
        self.long_text = run_config.long_text_mode
        self.pad_to: int | None = self.max_length if run_config.padding == "longest" else None
        self.max_batch_tokens: int | None = MAX_BATCH_TOKENS  # None: batches of batch_size texts only
        # Temperature scaling fitted at training (1.0: raw scores); every path goes through predict_proba.
        self.temperature: float = float(run_config.temperature)
        # What the outputs mean (gptclf.tasks): the probabilities, the decision, the evaluation.
        self.task: tasks.Task = tasks.get(run_config.task)
        # Per label: predicted when p >= its threshold, for a task that decides so (0.5 if none fitted).
        stored = run_config.thresholds or {}
        self.thresholds: np.ndarray = np.array([float(stored.get(lab, 0.5)) for lab in self.labels])
        self.device = device
        self.precision = precision
        self.directory = directory
        self.shapes = prediction_shapes(static_shapes, device, precision, self.pad_to or self.max_length,
                                        session is None)
        self.static = None if self.shapes is None else StaticForward(
            lambda m, x, n: m(x, n), device, precision, self.shapes.capture, fill=tokenizer.pad_id)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", precision: str = "fp32",
             quantize: str | None = None, backend: str = "auto", threads: int = 0,
             static_shapes: str = "auto", bases: BaseCache | None = None) -> "Classifier":
        """A model directory written by ``gptclf train`` (or ``gptclf export``), ready to predict.

        ``backend='auto'`` is onnxruntime for ``quantize='int8'`` or a directory holding only
        ONNX graphs, else torch. ``threads``: intra-op threads; onnxruntime's own for its session
        (0: one per physical core), and for torch on the CPU ``torch.set_num_threads``, which is
        process-wide (0: leave torch's setting alone). ``static_shapes`` (torch only): batches
        padded to fixed widths and rows, one CUDA graph per shape (:mod:`gptclf.graphs`); auto:
        on for CUDA. ``bases``: share the base model with the other runs loaded through the same
        :class:`gptclf.rundir.base.BaseCache` (torch only; :mod:`gptclf.inference.group`).
        """
        directory = Path(directory).expanduser()
        backend = resolve_backend(directory, backend, quantize)
        if backend == "onnxruntime":
            return cls._load_onnx(directory, device, precision, quantize, threads)
        run = load_run(directory, bases)
        dev = pick_device(device)
        prec = resolve_precision(precision, dev)
        if threads > 0 and dev.type == "cpu":
            torch.set_num_threads(threads)
        model = SequenceClassifier(run.backbone, run.config.pooling, causal=run.config.causal_mask)
        for p in model.parameters():
            p.requires_grad = False
        return cls(model.to(dev), run.tokenizer, run.config, dev, prec, directory, static_shapes=static_shapes)

    @classmethod
    def _load_onnx(cls, directory: Path, device: str, precision: str, quantize: str | None,
                   threads: int) -> "Classifier":
        from . import onnx

        if device not in ("auto", "cpu"):
            raise GptclfError(f"--backend onnxruntime runs on the CPU, not {device!r}",
                              hint="use --device cpu, or --backend torch for an accelerator")
        if precision not in ("fp32", "auto"):
            raise GptclfError(f"--backend onnxruntime runs fp32 or int8, not {precision}",
                              hint="use --int8 for the fast CPU path")
        onnx.require_onnx()
        read_run_config(directory)  # a clear error for a missing or foreign directory first
        graphs = directory
        if not (directory / onnx.MANIFEST).is_file():
            graphs = onnx.cached_export(directory, lambda: cls.load(directory, device="cpu", backend="torch"))
        cfg = read_run_config(graphs)
        tokenizer = tokenizer_from_config(cfg.tokenizer, graphs)
        check_tokenizer(graphs, tokenizer, registry.config_from_dict(cfg.architecture).vocab_size)
        session = onnx.OnnxSession(onnx.graph_path(graphs, "int8" if quantize else "fp32"), threads,
                                   head=onnx.read_manifest(graphs).get("window_head"), per_row=bool(quantize))
        session.check_outputs(len(cfg.labels), tokenizer.pad_id)
        # directory stays the run's own (its metrics.json is what `gptclf serve` reports).
        return cls(None, tokenizer, cfg, torch.device("cpu"), "int8" if quantize else "fp32", directory, session)

    # ------------------------------------------------------------------ prediction

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as at training: the run's template (if any) around each text, fitted to
        max_length (a chunked run's: every text's windows, one after the other)."""
        return self._encode(texts).rows

    def encode_with_flags(self, texts: Sequence[str]) -> tuple[Fitted, list[bool]]:
        """The fitted texts and whether each lost tokens; with :meth:`proba_from_ids`,
        :meth:`predict_proba` in two halves (a file's next chunk is tokenized in a worker thread
        while the model runs: ``gptclf predict --input``)."""
        fitted = self._encode(texts)
        return fitted, fitted.truncated

    def _encode(self, texts: Sequence[str]) -> Fitted:
        """The texts fitted to ``max_length`` as the run's ``long_text`` says (truncated, head and
        tail, or windows), and whether each lost tokens."""
        template = self.run_config.template
        try:
            ids, pre, post = tokenize_texts(self.tokenizer, texts, template)
        except BaseException as e:  # noqa: BLE001 - a tokenizer's Rust panic is a BaseException
            if is_interrupt(e):
                raise
            err = self._text_error(texts, template)
            if err is None:
                raise
            raise err from e
        return fit_texts(ids, pre, post, self.max_length, self.long_text, "the model's input")

    def _text_error(self, texts: Sequence[str], template: str | None) -> TextError | None:
        """The batch failed to tokenize: find the culprits one text at a time, so the error
        names them (and a server can answer the other texts of the batch)."""
        reasons = {}
        for i, t in enumerate(texts):
            try:
                tokenize_texts(self.tokenizer, [t], template)
            except BaseException as e1:  # noqa: BLE001
                if is_interrupt(e1):
                    raise
                reasons[i] = f"the tokenizer failed ({type(e1).__name__})"
        return TextError(reasons) if reasons else None

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text loses tokens: it is longer than the model's ``max_length`` (a chunked
        run's: than its ``max_windows`` windows) and gets cut (what every prediction path reports as
        ``truncated``)."""
        return self._encode(list(texts)).truncated

    def windows(self, texts: Sequence[str]) -> list[int]:
        """How many windows each text is read as (1 unless the run is chunked)."""
        return self._encode(list(texts)).windows.tolist()

    @property
    def longest_text(self) -> int | None:
        """The most tokens of a text the model reads (None: any text is read, truncated past max_length)."""
        if not self.long_text.chunked:
            return None
        room = self.max_length - sum(len(x) for x in tokenize_texts(self.tokenizer, [""], self.run_config.template)[1:])
        overlap = self.long_text.overlap(room)
        return room + (self.long_text.max_windows - 1) * (room - overlap)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[len(texts), num_classes]`` in input order: the softmax of the
        logits divided by the run's fitted temperature (``config.json`` ``temperature``); for a
        multi-label model the sigmoid of each logit (rows do not sum to 1).

        Raises :class:`~gptclf.errors.TextError` naming the texts the tokenizer fails on
        (any exception, a Rust panic included) or whose scores are not finite, so a caller
        can answer the other texts; never returns NaN."""
        return self._predict(texts, batch_size)[0]

    def _predict(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, Fitted]:
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        if batch_size < 1:
            raise GptclfError(f"batch size must be at least 1, not {batch_size}")
        fitted = self._encode(texts)
        return self.proba_from_ids(fitted, batch_size), fitted

    @torch.inference_mode()
    def proba_from_ids(self, ids: Sequence[Sequence[int]] | Fitted, batch_size: int = 32) -> np.ndarray:
        """:meth:`predict_proba` of texts already encoded by :meth:`encode` or
        :meth:`encode_with_flags` (so a caller can tokenize the next texts in another thread while
        the model runs); a chunked run's texts must come as :meth:`encode_with_flags`'s.

        Batches are length-sorted; on CUDA they hold at least ``GPU_BATCH_TOKENS`` padded tokens
        (results never depend on the batching), inputs go through pinned memory, and the
        probabilities stay on the GPU until the last batch, so the host never waits per batch."""
        if isinstance(ids, Fitted):
            if ids.offsets is not None:
                return self._finite(self._chunked_proba(ids, batch_size))
            ids = ids.rows
        elif self.long_text.chunked:
            raise GptclfError("a chunked run's texts go in as windows",
                              hint="encode them with Classifier.encode_with_flags")
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not len(ids):
            return out
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        width_of = self.shapes.width if self.shapes is not None else None
        budget = None if self.pad_to else self.max_batch_tokens  # padded to max_length: nothing to save
        batches = sorted_batches(lengths, batch_size, budget) if self.device.type != "cuda" else \
            budget_batches(lengths, batch_size, GPU_BATCH_TOKENS, width_of)
        order, parts = [], []
        for idx in batches:
            longest = max(len(ids[i]) for i in idx)
            width = self.pad_to or (width_of(longest) if width_of is not None else None)
            batch, lens = collate([ids[i] for i in idx], self.tokenizer.pad_id, width, pad_multiple(self.device))
            if self.session is not None:
                out[idx] = self.session(batch.numpy(), lens.numpy())
                continue
            order += idx
            parts.append(self.task.probabilities(self._logits(batch, lens) / self.temperature))
        if parts:
            out[order] = torch.cat(parts).cpu().numpy()
        return self._finite(out)

    @staticmethod
    def _finite(out: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(out).all(1))
        if len(bad):  # never hand out NaN as a probability (invalid JSON, a silent wrong label)
            raise TextError({int(i): "the model's scores are not finite" for i in bad})
        return out

    def _chunked_proba(self, fitted: Fitted, batch_size: int) -> np.ndarray:
        """``--long-text chunk``: every window's pooled vector, length-sorted batches under the token
        budget (never a long text's windows all at once), then each text's windows combined and
        classified."""
        if self.session is not None:
            logits = torch.from_numpy(self.session.chunked(fitted.rows, fitted.windows, self.tokenizer.pad_id,
                                                           batch_size, self.max_batch_tokens))
            return self.task.probabilities(logits / self.temperature).numpy()
        assert self.model is not None and fitted.offsets is not None
        lengths = np.fromiter((len(t) for t in fitted.rows), dtype=np.int64, count=len(fitted.rows))
        vectors = torch.zeros((len(fitted.rows), self.model.config.emb_dim), device=self.device)
        for idx in sorted_batches(lengths, batch_size, self.max_batch_tokens):
            batch, lens = collate([fitted.rows[i] for i in idx], self.tokenizer.pad_id, self.pad_to,
                                  pad_multiple(self.device))
            with autocast(self.device, self.precision):
                v = self.model.vectors(self.model.backbone.embed(batch.to(self.device)), lens.to(self.device), 0)
            vectors[torch.as_tensor(idx, device=self.device)] = v.float()
        counts = torch.as_tensor(fitted.windows, device=self.device)
        logits = self.model.classify_windows(vectors, counts).float()
        return self.task.probabilities(logits / self.temperature).cpu().numpy()

    def _logits(self, batch: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """fp32 logits of one padded batch, on the model's device."""
        if self.static is not None:  # pads the rows, pins, copies into its buffers, replays
            return self.static(self.model, batch, lens)
        if self.device.type == "cuda":
            batch, lens = batch.pin_memory(), lens.pin_memory()
        with autocast(self.device, self.precision):
            return self.model(batch.to(self.device, non_blocking=True),
                              lens.to(self.device, non_blocking=True)).float()

    def predict(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"label", "score": p(label), "scores": {label: p}, "truncated", "empty"}]``, one per
        text, in order. ``truncated``: the text was longer than ``max_length`` tokens and only its
        start was read. ``empty``: the text has nothing but whitespace, so the label is only the
        model's prior (every empty text gets the same one): treat it as no answer.

        A multi-label model answers ``{"labels": [...], "scores", "truncated", "empty"}``: the
        labels whose probability reaches their threshold (config.json ``thresholds``), most
        probable first, possibly none."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs, fitted = self._predict(texts, batch_size)
        windows = fitted.windows.tolist() if self.long_text.chunked else [None] * len(texts)
        return [self.task.prediction(self.labels, p, cut, not t.strip(), self.thresholds, n)
                for p, cut, t, n in zip(probs, fitted.truncated, texts, windows)]

    @property
    def multi_label(self) -> bool:
        """Whether each text gets a set of labels (``predict`` answers ``labels``, not ``label``)."""
        return self.task is tasks.MULTI_LABEL

    def evaluate(self, texts: Sequence[str], labels: Sequence[Any], batch_size: int = 32,
                 mistakes: int = 0) -> dict[str, Any]:
        """The task's report on labelled texts: for one label per text accuracy, loss, per-class
        P/R/F1, confusion matrix, ROC-AUC (binary); for label sets (one list per text)
        the per-label and micro/macro metrics. With ``mistakes=k``, the k wrong decisions the
        model was surest of."""
        self.task.check_gold(labels, self.labels)
        probs = self.predict_proba(list(texts), batch_size)
        return self.task.evaluate(list(texts), list(labels), probs, self.labels, self.thresholds, mistakes)


def prediction_shapes(option: str, device: torch.device, precision: str, cap: int, torch_backend: bool
                      ) -> Shapes | None:
    """``static_shapes`` (auto, on, off) for prediction: the shapes, or None (the eager path)."""
    if option not in STATIC_SHAPES:
        raise GptclfError(f"unknown static_shapes {option!r}", hint=f"use one of {', '.join(STATIC_SHAPES)}")
    if not torch_backend or option == "off" or (option == "auto" and device.type != "cuda"):
        return None
    return Shapes(cap, precision, capture_available(device))


def resolve_backend(directory: Path, backend: str, quantize: str | None) -> str:
    """'torch' or 'onnxruntime' for ``Classifier.load``'s arguments (see its docstring)."""
    if backend not in BACKENDS:
        raise GptclfError(f"unknown backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if quantize not in (None, "int8"):
        raise GptclfError(f"unknown quantization {quantize!r}", hint="use int8")
    if backend == "torch" and quantize:
        raise GptclfError("int8 inference runs on ONNX Runtime (torch's dynamic quantization is deprecated)",
                          hint="drop --backend torch, or pass --backend onnxruntime")
    if backend != "auto":
        return backend
    onnx_only = (directory / "onnx.json").is_file() and not (directory / "model.safetensors").exists()
    return "onnxruntime" if quantize or onnx_only else "torch"
