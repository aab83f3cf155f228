"""Classification metrics without extra dependencies: accuracy, per-class P/R/F1,
confusion matrix, (binary) ROC-AUC and calibration bins. The metrics of label sets (micro/macro
F1, exact match, Hamming loss) are that task's own (:mod:`gptclf.tasks`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def roc_auc(y_true: Sequence[int], score_pos: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None with one class."""
    y = np.asarray(y_true)
    s = np.asarray(score_pos, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y == 1].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str],
                          probs: np.ndarray | None = None) -> dict[str, Any]:
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, n)
    total = int(cm.sum())
    per_class = {}
    for i, name in enumerate(labels):
        tp = int(cm[i, i])
        fp = int(cm[:, i].sum() - tp)
        fn = int(cm[i, :].sum() - tp)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": int(cm[i, :].sum())}
    out: dict[str, Any] = {
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "n": total,
        "per_class": per_class,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])) if n else 0.0,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }
    if probs is not None and n == 2:
        out["roc_auc"] = roc_auc(y_true, probs[:, 1])
    return out


def most_confident_mistakes(texts: Sequence[str], y_true: Sequence[int], probs: np.ndarray,
                            labels: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` wrong predictions the model was surest of: where to look first for label
    noise or a blind spot. Each is ``{"text", "true", "predicted", "probability"}``."""
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0 or k <= 0:
        return []
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:k]
    return [{"text": str(texts[i]), "true": labels[int(y[i])], "predicted": labels[int(pred[i])],
             "probability": float(probs[i, pred[i]])} for i in order]


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """The reliability diagram's bins: top-class confidence cut into ``n_bins`` equal-width
    bins over (0, 1]; per non-empty bin its count, mean confidence and accuracy."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if len(y) == 0:
        return []
    conf, pred = probs.max(1), probs.argmax(1)
    # Bin b holds (b/n, (b+1)/n]: a confidence of exactly 1 lands in the last bin.
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            out.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": int(mask.sum()),
                        "confidence": float(conf[mask].mean()), "accuracy": float((pred[mask] == y[mask]).mean())})
    return out


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the count-weighted mean gap between the accuracy and the mean
    top-class confidence of each confidence bin (15 equal-width bins, as in the paper)."""
    bins = reliability_bins(y_true, probs, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n)
