"""Prediction under a token budget per forward pass (``Classifier.max_batch_tokens``) gives
the same probabilities as plain batches of ``batch_size``, on torch and on onnxruntime; and
```gptclf serve --backend onnxruntime`` answers 16 concurrent single-text clients exactly as
the classifier does in process. An untrained micro GPT-2 (``random_run``): the arithmetic is
what is compared, and it needs no training run."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from gptclf.data.batching import sorted_batches  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402

# threads=1 below also sets torch's (process-wide) thread count; the fixture restores it.
pytestmark = pytest.mark.usefixtures("one_thread")


def sms_texts(sms_file: Path, n: int) -> list[str]:
    """Real SMS texts of every length: every 7th row, plus the 5 longest of the file."""
    rows = [ln.split("\t", 1)[1] for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    return rows[::7][: n - 5] + sorted(rows, key=len)[-5:]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_token_budget_keeps_every_probability(random_run: Path, sms_file: Path, backend: str) -> None:
    clf = Classifier.load(random_run, device="cpu", backend=backend, threads=1)
    texts = sms_texts(sms_file, 120)
    lengths = np.array([len(x) for x in clf.encode(texts)])
    budget = 4 * int(np.median(lengths))
    assert len(sorted_batches(lengths, 32, budget)) > 2 * len(sorted_batches(lengths, 32))  # really cut
    clf.max_batch_tokens = None
    plain = clf.predict_proba(texts, batch_size=32)
    clf.max_batch_tokens = budget
    cut = clf.predict_proba(texts, batch_size=32)
    assert np.abs(cut - plain).max() <= 1e-5
    one = np.concatenate([clf.predict_proba([t]) for t in texts[:20]])
    assert np.abs(one - plain[:20]).max() <= 1e-5


def test_onnxruntime_and_torch_agree_under_the_default_budget(random_run: Path, sms_file: Path) -> None:
    texts = sms_texts(sms_file, 120)
    torch_clf = Classifier.load(random_run, backend="torch")
    ort_clf = Classifier.load(random_run, backend="onnxruntime", threads=1)
    assert ort_clf.max_batch_tokens == torch_clf.max_batch_tokens is not None
    assert np.abs(ort_clf.predict_proba(texts) - torch_clf.predict_proba(texts)).max() <= 1e-5


def _classify(url: str, text: str) -> dict:
    req = urllib.request.Request(f"{url}/v1/classify", data=json.dumps({"texts": [text]}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())["results"][0]


def test_serve_onnxruntime_answers_16_concurrent_clients(random_run: Path, sms_file: Path) -> None:
    from helpers import serve_process

    texts = sms_texts(sms_file, 64)
    want = Classifier.load(random_run, backend="onnxruntime", threads=1).predict(texts)
    with serve_process(random_run, "--backend", "onnxruntime", "--threads", "1") as (url, _):
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda t: _classify(url, t), texts))
        health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=30).read())
    assert max(abs(g["scores"][k] - w["scores"][k]) for g, w in zip(got, want) for k in w["scores"]) <= 1e-5
    # An untrained model: labels compared where the two scores are not a near tie.
    sure = [i for i, w in enumerate(want) if abs(w["score"] - 0.5) > 1e-4]
    assert len(sure) > len(want) // 2 and all(got[i]["label"] == want[i]["label"] for i in sure)
    assert [g["truncated"] for g in got] == [w["truncated"] for w in want]
    assert health["texts"] == len(texts) and health["failures"] == 0
