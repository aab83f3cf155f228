"""What is wrong with which row: label issues (Cleanlab's confident learning on the out-of-fold
probabilities), exact and near duplicates, train/test leaks, outliers.

* **label**: :func:`cleanlab.filter.find_label_issues` flags the row and
  :func:`cleanlab.rank.get_label_quality_scores` scores it (lower = more suspicious); multi-label
  data use :mod:`cleanlab.multilabel_classification`, and ``flagged_labels`` names the labels of a
  row that look wrong (``find_multilabel_issues_per_class``).
* **duplicate**: the same normalised text (Unicode NFKC, case-folded, whitespace collapsed) as an
  earlier row, or a pooled trunk vector whose cosine similarity with an earlier row's is at least
  ``--similarity`` (the vectors are centred first: a decoder's hidden states share one large
  direction that makes every pair look alike).
* **leak**: a duplicate (either kind) of a training row that ``gptclf train`` would put in the
  validation or test split (or that is in the ``--val`` / ``--test`` file): its score there is
  memorised, not measured.
* **outlier**: :class:`cleanlab.outlier.OutOfDistribution` scores every vector by its distance to
  its nearest neighbours; a row is an outlier when that distance exceeds Q3 + (1/T - 1) x IQR of all
  rows' (cleanlab Datalab's rule; T = ``--outlier-threshold``, Datalab's default 0.37037).
* **empty**: no text at all; the row is not cross-fitted.

A row can have several; ``issue`` holds the first of :data:`ISSUES` that applies, ``issues`` all.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import tasks
from ..data.tables import Example
from ..errors import GptclfError

ISSUES = ("label", "leak", "duplicate", "outlier", "empty")


def cleanlab() -> Any:
    try:
        import cleanlab as module
    except ImportError:
        raise GptclfError("gptclf audit needs cleanlab", hint="pip install 'gptclf[audit]'") from None
    return module


@dataclass
class LabelIssues:
    flagged: np.ndarray         # bool [rows]
    quality: np.ndarray         # float [rows], lower = more suspicious
    suggested: list[str]        # the label (or label set) the probabilities suggest
    flagged_labels: list[str]   # multi-label: the labels of the row that look wrong; else ""


def _single_label(examples: Sequence[Example], labels: list[str], probs: np.ndarray, delimiter: str) -> LabelIssues:
    cleanlab()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {lab: i for i, lab in enumerate(labels)}
    given = np.array([index[e.label] for e in examples], dtype=np.int64)
    flagged = find_label_issues(given, probs, n_jobs=1)
    quality = get_label_quality_scores(given, probs)
    return LabelIssues(flagged, quality, [labels[i] for i in probs.argmax(1)], [""] * len(examples))


def _multi_label(examples: Sequence[Example], labels: list[str], probs: np.ndarray, delimiter: str) -> LabelIssues:
    cleanlab()
    from cleanlab.multilabel_classification.filter import find_label_issues, find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    index = {lab: i for i, lab in enumerate(labels)}
    given = [[index[lab] for lab in e.label_set()] for e in examples]
    flagged = find_label_issues(given, probs, n_jobs=1)
    quality = get_label_quality_scores(given, probs)
    per_label = np.asarray(find_multilabel_issues_per_class(given, probs, n_jobs=1), dtype=bool)
    if per_label.shape != probs.shape:  # older cleanlab: a list of one mask per label
        per_label = per_label.T
    suggested = [delimiter.join(lab for lab, p in zip(labels, row) if p >= 0.5) for row in probs]
    wrong = [delimiter.join(lab for lab, bad in zip(labels, row) if bad) for row in per_label]
    return LabelIssues(flagged | per_label.any(1), quality, suggested, wrong)


# Each task's confident learning (a new task adds its entry).
LABEL_ISSUES: dict[str, Callable[..., LabelIssues]] = {
    tasks.SINGLE_LABEL.name: _single_label, tasks.MULTI_LABEL.name: _multi_label}


def label_issues(task: tasks.Task, examples: Sequence[Example], labels: list[str], probs: np.ndarray,
                 delimiter: str) -> LabelIssues:
    if task.name not in LABEL_ISSUES:
        raise GptclfError(f"gptclf audit cannot score the labels of a {task.name} task")
    return LABEL_ISSUES[task.name](examples, labels, probs, delimiter)


# ------------------------------------------------------------------------- duplicates and leaks


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class Matches:
    kind: list[str]         # "leak", "duplicate" or ""
    of: np.ndarray          # the matching row's index (-1: none)
    similarity: np.ndarray  # cosine similarity with it (1.0 for the same normalised text)


def find_duplicates(texts: Sequence[str], split: Sequence[str], vectors: np.ndarray, threshold: float,
                    chunk: int = 1024) -> Matches:
    """Each row's match: a training row, where the row itself is validation or test (a leak), else an
    earlier row (a duplicate): the same normalised text first, else the most similar vector at or
    above ``threshold``."""
    n = len(texts)
    v = vectors - vectors.mean(0, keepdims=True)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    is_train = np.array([s == "train" for s in split])
    held = np.array([s in ("val", "test") for s in split])
    best_train, sim_train = _nearest(v, is_train, False, chunk)
    best_prior, sim_prior = _nearest(v, np.ones(n, dtype=bool), True, chunk)
    first: dict[str, int] = {}
    train_text: dict[str, int] = {}
    kind, of, sim = [""] * n, np.full(n, -1), np.zeros(n, dtype=np.float32)
    for i, t in enumerate(texts):
        key = normalise(t)
        if held[i] and (key in train_text or sim_train[i] >= threshold):
            j = train_text.get(key, -1)
            kind[i], of[i], sim[i] = "leak", *((j, 1.0) if j >= 0 else (best_train[i], sim_train[i]))
        elif key in first or sim_prior[i] >= threshold:
            j = first.get(key, -1)
            kind[i], of[i], sim[i] = "duplicate", *((j, 1.0) if j >= 0 else (best_prior[i], sim_prior[i]))
        first.setdefault(key, i)
        if is_train[i]:
            train_text.setdefault(key, i)
    return Matches(kind, of, sim)


def _nearest(v: np.ndarray, columns: np.ndarray, earlier: bool, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the most similar other row among ``columns`` (a bool mask; with ``earlier``
    only the rows before it) and that similarity (-inf where there is none), a chunk of rows at a time."""
    n = len(v)
    best, sim = np.full(n, -1), np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        s = v[start:stop] @ v.T
        s[:, ~columns] = -np.inf
        rows = np.arange(start, stop)[:, None]
        s[(np.arange(n)[None, :] >= rows) if earlier else (np.arange(n)[None, :] == rows)] = -np.inf
        best[start:stop] = s.argmax(1)
        sim[start:stop] = s.max(1)
    return best, sim


# ------------------------------------------------------------------------- outliers


def find_outliers(vectors: np.ndarray, threshold: float, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's out-of-distribution score of every vector (lower = more unusual) and whether it
    is an outlier by Datalab's rule on the mean distance to the ``k`` nearest neighbours."""
    cleanlab()
    from cleanlab.outlier import OutOfDistribution

    k = min(k, len(vectors) - 1)
    scores = OutOfDistribution({"k": k}).fit_score(features=vectors, verbose=False)
    # The score is exp(-distance / scale): its negative log is the distance, up to a scale the
    # quartile rule does not care about.
    distance = -np.log(np.maximum(scores, 1e-300))
    q1, q3 = np.percentile(distance, [25, 75])
    return scores, distance > q3 + (1 / threshold - 1) * (q3 - q1)
