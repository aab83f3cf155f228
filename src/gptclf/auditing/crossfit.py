"""Out-of-fold probabilities for every row, with the frozen trunk computed once for all folds.

The frozen blocks' output does not depend on the labels, so one :class:`TrunkCache` over every
row serves every fold: each fold trains only the trainable tail and head, freshly initialised
(seeded as ``gptclf train`` seeds its head), on the other folds' rows, exactly as ``gptclf
train`` trains (:func:`~gptclf.training.recipe.make_trainer`, the run's recipe; ``--audit-epochs``
may shorten it), and predicts its own fold. No fold ever sees the labels it predicts: there is
no best-epoch selection or early stopping on them. The same cache gives each row's pooled trunk
vector, which the duplicate, leak and outlier checks compare (:mod:`gptclf.auditing.issues`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from .. import tasks
from ..config import AuditOptions, TrainConfig
from ..data.encoding import EncodedDataset, encode_examples
from ..data.tables import Example
from ..device import configure_backends, pick_device, resolve_precision
from ..loading import load_backbone
from ..loading.backbone import Backbone
from ..models.classifier import SequenceClassifier
from ..progress import Log
from ..training.evaluate import predict_logits
from ..training.recipe import Encoded, make_trainer, setup_classifier
from ..training.trunk_cache import CachedFeeder, Feeder, Feeds, TokenFeeder, TrunkCache, cache_mode


@dataclass
class CrossFit:
    """What the folds give: every audited row's out-of-fold probabilities and pooled trunk vector."""

    probs: np.ndarray     # [rows, labels]
    vectors: np.ndarray   # [rows, dim], the trunk's hidden states entering the first trained block, mean-pooled
    folds: list[dict[str, Any]] = field(default_factory=list)  # per fold: rows, score, seconds
    cache_seconds: float = 0.0
    cache_mode: str = "off"


class RowsFeeder:
    """A feeder over some rows of another: index ``i`` here is row ``rows[i]`` there, so every fold
    reads the one cache."""

    def __init__(self, feed: Feeder, rows: np.ndarray) -> None:
        self.feed, self.rows = feed, rows

    def __call__(self, model: SequenceClassifier, idx: Sequence[int]) -> torch.Tensor:
        return self.feed(model, [int(self.rows[i]) for i in idx])


def subset(ds: EncodedDataset, rows: np.ndarray) -> EncodedDataset:
    return EncodedDataset([ds.ids[i] for i in rows], ds.labels[torch.as_tensor(rows)], ds.max_length)


def pooled(cache: TrunkCache) -> np.ndarray:
    """Each text's cached hidden states averaged over its real tokens."""
    out = np.zeros((len(cache.lengths), cache.storage.shape[1]), dtype=np.float32)
    for i, n in enumerate(cache.lengths.tolist()):
        start = int(cache.offsets[i])
        out[i] = cache.storage[start: start + max(n, 1)].mean(0).cpu().numpy()
    return out


def cross_fit(cfg: TrainConfig, opts: AuditOptions, examples: list[Example], labels: list[str], fold: np.ndarray,
              log: Log) -> CrossFit:
    """Train ``opts.folds`` tails on one trunk cache of ``examples`` (``fold``: each one's fold) and
    predict each fold from the others; ``cfg`` is resolved."""
    task = tasks.get(cfg.task)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    backbone = load_backbone(cfg.model, cfg.init)
    cfg = cfg.for_backbone(backbone.model.config.arch)
    tok, ctx = backbone.tokenizer, backbone.model.config.context_length
    index = {lab: i for i, lab in enumerate(labels)}
    ds = encode_examples(tok, [e.text for e in examples], task.targets(examples, index), cfg.max_length_for(ctx),
                         ctx, "audit", cfg.template)
    pad_to = ds.max_length if cfg.padding == "longest" else None
    probe, frozen = setup_classifier(cfg, backbone, len(labels), device, fresh_copy=True)
    mode = cache_mode(cfg, probe, frozen, [ds], pad_to, device, log)
    t0 = time.perf_counter()
    # Without a cache (nothing frozen, dropout) the vectors still come from one pass: the last block's output.
    cache = TrunkCache.build(probe, ds, frozen if mode != "off" else probe.config.n_layers, tok.pad_id, pad_to,
                             device, precision, cfg.eval_batch_size, "every row", mode if mode != "off" else "ram",
                             cfg.progress, log=log)
    del probe
    result = CrossFit(np.zeros((len(ds), len(labels)), dtype=np.float32), pooled(cache),
                      cache_seconds=time.perf_counter() - t0, cache_mode=mode)
    if mode == "off":
        cache.close()
        whole: Feeder = TokenFeeder(ds, tok.pad_id, pad_to, device)
    else:
        log(f"cached the {frozen} frozen blocks' output for {len(ds)} texts once for {opts.folds} folds "
            f"in {result.cache_seconds:.1f}s ({mode})")
        whole = CachedFeeder(cache, frozen, device)
    fcfg = replace(cfg, epochs=opts.audit_epochs or cfg.epochs, keep_best=False, early_stopping_metric=None,
                   patience=None, checkpoint_every=0)
    try:
        for k in range(opts.folds):
            result.folds.append(_fold(fcfg, k, fold, ds, whole, backbone, labels, device, precision, result, log))
    finally:
        cache.close()
    return result


def _fold(cfg: TrainConfig, k: int, fold: np.ndarray, ds: EncodedDataset, whole: Feeder, backbone: Backbone,
          labels: list[str], device: torch.device, precision: str, result: CrossFit, log: Log) -> dict[str, Any]:
    """Train a fresh tail on every fold but ``k``, write fold ``k``'s probabilities into ``result``."""
    t0 = time.perf_counter()
    task = tasks.get(cfg.task)
    train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
    torch.manual_seed(cfg.seed)
    model, _ = setup_classifier(cfg, backbone, len(labels), device, fresh_copy=True)
    feeds = Feeds({"train": RowsFeeder(whole, train), "val": RowsFeeder(whole, held)}, [], "", 0.0)
    parts = {"train": subset(ds, train), "val": subset(ds, held)}
    weight = task.balance_weights(parts["train"].labels, labels)[0] if cfg.balance == "weight" else None
    trainer, _ = make_trainer(cfg, model, feeds, Encoded(backbone, parts, ds.max_length), device, precision,
                              lambda line: None, class_weight=weight)
    _, interrupted = trainer.fit()
    if interrupted:
        raise KeyboardInterrupt
    logits = predict_logits(model, feeds["val"], len(held), cfg.eval_batch_size, parts["val"].lengths, device,
                            precision)
    result.probs[held] = task.probabilities(torch.from_numpy(logits)).numpy()
    tally = task.tally(len(held))
    tally.add(range(len(held)), torch.from_numpy(logits), parts["val"].labels)
    score = tally.result()[1]
    seconds = time.perf_counter() - t0
    log(f"fold {k + 1}/{int(fold.max()) + 1}: trained on {len(train)} rows for {cfg.epochs} epoch(s), "
        f"held-out {task.score_name} {score * 100:.2f}% on {len(held)} rows ({seconds:.1f}s)")
    return {"fold": k + 1, "train_rows": len(train), "held_out_rows": len(held), task.score_name: score,
            "seconds": seconds}
