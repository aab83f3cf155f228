"""Classification metrics without extra dependencies: accuracy, per-class P/R/F1,
confusion matrix and (binary) ROC-AUC; for ``--multi-label`` per-label P/R/F1, micro/macro F1,
exact match and Hamming loss."""

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


# --------------------------------------------------------------------------- multi-label


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``--multi-label`` metrics from 0/1 matrices ``[n, num_labels]``: per-label precision,
    recall, F1 and support; micro F1 (every yes/no decision pooled: the frequent labels weigh
    most), macro F1 (the labels' mean: each label weighs the same), exact match (the share of
    texts whose whole label set is right; also ``accuracy``) and the Hamming loss (the share of
    wrong yes/no decisions). A label with no true and no predicted example has F1 0."""
    y = np.asarray(y_true, dtype=bool).reshape(-1, len(labels))
    p = np.asarray(y_pred, dtype=bool).reshape(-1, len(labels))
    tp, fp, fn = (y & p).sum(0), (~y & p).sum(0), (y & ~p).sum(0)
    per_class = {}
    for i, name in enumerate(labels):
        pr = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        rc = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        per_class[name] = {"precision": float(pr), "recall": float(rc), "f1": float(2 * pr * rc / (pr + rc))
                           if pr + rc else 0.0, "support": int(y[:, i].sum()), "predicted": int(p[:, i].sum())}
    n = len(y)
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    exact = float((y == p).all(1).mean()) if n else 0.0
    return {
        "multi_label": True,
        "accuracy": exact,
        "exact_match": exact,
        "n": n,
        "per_class": per_class,
        "micro_precision": TP / (TP + FP) if TP + FP else 0.0,
        "micro_recall": TP / (TP + FN) if TP + FN else 0.0,
        "micro_f1": 2 * TP / (2 * TP + FP + FN) if TP + FP + FN else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])) if labels else 0.0,
        "hamming_loss": float((y != p).mean()) if n else 0.0,
        "labels": list(labels),
    }


def multilabel_mistakes(texts: Sequence[str], y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                        labels: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` texts with the surest wrong yes/no decision (a label predicted with the highest
    probability that is not true, or a true label given the lowest), each as ``{"text", "true",
    "predicted", "probability"}`` with the label sets written ``a, b`` and the wrong decision's
    confidence."""
    y = np.asarray(y_true, dtype=bool)
    if len(y) == 0 or k <= 0:
        return []
    pred = probs >= thresholds
    conf = np.where(pred, probs, 1 - probs) * (pred != y)  # 0 where the decision is right
    worst = conf.max(1)
    order = [i for i in np.argsort(-worst, kind="stable") if worst[i] > 0][:k]

    def names(row: np.ndarray) -> str:
        return ", ".join(lab for lab, on in zip(labels, row) if on) or "(none)"

    return [{"text": str(texts[i]), "true": names(y[i]), "predicted": names(pred[i]),
             "probability": float(worst[i])} for i in order]
