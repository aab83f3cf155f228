"""Prediction on static shapes (--static-shapes on: the CUDA-graph path without capture on a
CPU), token-budget batches, and predict --input's tokenizing worker: same results, in order."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from gptclf.data.batching import budget_batches
from gptclf.errors import DataWarning
from gptclf.graphs import bucket_width
from gptclf.inference.batch_files import Prefetch, predict_file
from gptclf.inference.classifier import Classifier

TEXTS = ["win a prize now", "", "see you at lunch " * 9, "ok", "URGENT call 0800 " * 3, "hi " * 60,
         "fine thanks", "x"]


def test_static_shapes_give_the_eager_predictions_in_order(random_run: Path) -> None:
    eager = Classifier.load(random_run, device="cpu", static_shapes="off")
    static = Classifier.load(random_run, device="cpu", static_shapes="on")
    assert eager.static is None and static.static is not None
    texts = TEXTS * 3
    want = eager.predict_proba(texts, batch_size=3)
    for batch_size in (1, 3, 5, 64):  # ragged rows: 1..5 rows padded to 1, 2, 4, 8
        got = static.predict_proba(texts, batch_size=batch_size)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    one_by_one = np.stack([eager.predict_proba([t])[0] for t in texts])
    np.testing.assert_allclose(want, one_by_one, atol=1e-6, rtol=0)
    assert len(static.static.runners[id(static.model)][1]) > 2  # several shapes ran
    assert [p["truncated"] for p in static.predict(texts)] == [p["truncated"] for p in eager.predict(texts)]


def test_auto_is_eager_on_cpu(random_run: Path) -> None:
    assert Classifier.load(random_run, device="cpu").static is None


def test_budget_batches_cover_every_text_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = budget_batches(lengths, 8, 4096, bucket_width)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    longest = [int(lengths[b[0]]) for b in batches]
    assert longest == sorted(longest, reverse=True)
    for b in batches[:-1]:
        assert len(b) == max(8, 4096 // bucket_width(int(lengths[b[0]])))


def test_prefetch_keeps_order_and_raises_in_turn() -> None:
    def source():
        yield from range(5)
        raise ValueError("bad row")

    got = []
    with Prefetch(source(), 2) as p, pytest.raises(ValueError, match="bad row"):
        for x in p:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    with Prefetch(iter(range(10**6)), 2) as p:  # leaving early stops the worker
        next(iter(p))
    assert not p.thread.is_alive()
    assert not any(t.name == "gptclf-prefetch" for t in threading.enumerate())


class _Plain:
    """Only what predict_file needs: no encode_with_flags, so no worker thread."""

    def __init__(self, clf: Classifier) -> None:
        self.labels, self.max_length, self.clf = clf.labels, clf.max_length, clf

    def predict_proba(self, texts, batch_size):  # noqa: ANN001
        return self.clf.predict_proba(texts, batch_size)

    def truncated(self, texts):  # noqa: ANN001
        return self.clf.truncated(texts)


def test_predict_file_with_the_worker_equals_the_plain_path(random_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS * 40)))
    clf = Classifier.load(random_run, device="cpu", static_shapes="on")
    with pytest.warns(DataWarning, match="truncated"):  # "hi " * 60 is cut to the 32-token context: one summary warning
        predict_file(clf, src, tmp_path / "fast.jsonl", chunk_size=7, batch_size=4)
    with pytest.warns(DataWarning, match="truncated"):
        predict_file(_Plain(Classifier.load(random_run, device="cpu", static_shapes="off")), src,
                     tmp_path / "plain.jsonl", chunk_size=7, batch_size=4)
    fast = [json.loads(x) for x in (tmp_path / "fast.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert [r["id"] for r in fast] == list(range(len(TEXTS) * 40))
    assert [r["predicted_label"] for r in fast] == [r["predicted_label"] for r in plain]
    assert [r["truncated"] for r in fast] == [r["truncated"] for r in plain]
    for a, b in zip(fast, plain):
        assert abs(a["predicted_score"] - b["predicted_score"]) <= 2e-6
