"""One request's text must never fail another's.

A lone surrogate (valid JSON: ``"\\ud800"``) used to make the Hugging Face tokenizer raise
TypeError, and the batcher handed that one error to every request of the batch; a
tokenizer's Rust panic (a ``BaseException``) killed the batching task for good while
``/healthz`` said "ok". Here: a tiny Llama with a real ``tokenizer.json``, real
concurrent requests through the batcher, and a tokenizer that panics on one word.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from gptclf.errors import TextError  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402
from gptclf.inference.serve.app import create_app  # noqa: E402
from gptclf.inference.serve.settings import ServeSettings  # noqa: E402
from gptclf.loading import load_backbone  # noqa: E402
from gptclf.models.classifier import SequenceClassifier, replace_head  # noqa: E402
from gptclf.tokenizers.gpt2 import GPT2Tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_hf_llama  # noqa: E402

POISON = "x \ud800 y"
PANIC_WORD = "kaboom"


class Panic(BaseException):
    """What pyo3 raises for a Rust panic: a BaseException, not an Exception."""


@pytest.fixture(scope="module")
def llama_classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    d = tmp_path_factory.mktemp("tiny-llama")
    make_hf_llama(d, tie=True, n_heads=4, n_kv_heads=2)
    bb = load_backbone(str(d))
    torch.manual_seed(0)
    model = SequenceClassifier(replace_head(bb.model, 2), "last-nonpad").eval()
    return Classifier(model, bb.tokenizer, {"labels": ["ham", "spam"], "max_length": 32},
                      torch.device("cpu"))


class PanickingTokenizer:
    """Wraps a real tokenizer and panics (like a pathological pre-tokenizer regex) on one word."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.pad_id, self.vocab_size = inner.name, inner.pad_id, inner.vocab_size

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self.inner.encode(text, allow_special)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if any(PANIC_WORD in t for t in texts):
            raise Panic("regex stack overflow")
        return self.inner.encode_batch(texts)


def test_lone_surrogates_tokenize_the_same_on_every_tokenizer(llama_classifier: Classifier) -> None:
    hf = llama_classifier.tokenizer
    with pytest.raises(Exception):  # the raw HF tokenizer refuses them: why the cleaning exists
        hf.encode_batch([POISON])
    clean = "x \ufffd y"
    assert llama_classifier.encode([POISON]) == llama_classifier.encode([clean])
    gpt2 = GPT2Tokenizer()
    from gptclf.data.encoding import tokenize_texts

    assert tokenize_texts(gpt2, [POISON])[0] == tokenize_texts(gpt2, [clean])[0] == [gpt2.encode_batch([clean])[0]]
    # A valid pair is one character, not two replacements.
    assert tokenize_texts(gpt2, ["\ud83d\ude00"])[0] == [gpt2.encode("\U0001F600")]


def test_surrogate_gets_200_on_llama(llama_classifier: Classifier) -> None:
    with TestClient(create_app(llama_classifier)) as c:
        body = json.dumps({"texts": [POISON, "hello"]})  # escaped: "\\ud800" is valid JSON
        r = c.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2


def test_classifier_names_the_text_that_panics(llama_classifier: Classifier) -> None:
    clf = Classifier(llama_classifier.model, PanickingTokenizer(llama_classifier.tokenizer),
                     llama_classifier.run_config, torch.device("cpu"))
    with pytest.raises(TextError) as e:
        clf.predict_proba(["fine", f"a {PANIC_WORD}", "fine too"])
    assert list(e.value.reasons) == [1] and "Panic" in e.value.reasons[1]
    assert clf.predict_proba(["fine", "fine too"]).shape == (2, 2)


def test_non_finite_scores_are_an_error_not_nan(llama_classifier: Classifier) -> None:
    model = SequenceClassifier(replace_head(load_backbone_copy(llama_classifier), 2), "last-nonpad").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    clf = Classifier(model, llama_classifier.tokenizer, llama_classifier.run_config, torch.device("cpu"))
    with pytest.raises(TextError, match="not finite"):
        clf.predict(["hello"])


def load_backbone_copy(clf: Classifier) -> torch.nn.Module:
    import copy

    return copy.deepcopy(clf.model.backbone)


class Gate:
    """The real classifier behind a gate, so the test decides which requests share a batch."""

    def __init__(self, clf: Classifier) -> None:
        self.clf, self.labels, self.max_length = clf, clf.labels, clf.max_length
        self.config, self.directory = clf.config, None
        self.open, self.entered = threading.Event(), threading.Event()
        self.calls: list[int] = []

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(len(texts))
        self.entered.set()
        assert self.open.wait(30)
        return self.clf.predict_proba(texts, batch_size)


def _batched_round(clf: Any, poison: list[str], innocent: list[list[str]]) -> tuple[Any, list, Gate]:
    """One busy forward pass, then the poison request and the innocent ones queued behind it
    so they share the next batch."""
    gate = Gate(clf)
    app = create_app(gate, ServeSettings(batch_wait_ms=1, max_batch_size=64))
    out: dict[int, Any] = {}
    with TestClient(app, raise_server_exceptions=False) as c:
        def post(i: int, texts: list[str]) -> threading.Thread:
            t = threading.Thread(target=lambda: out.__setitem__(i, c.post("/v1/classify", json={"texts": texts})))
            t.start()
            return t

        threads = [post(0, ["warm up"])]
        assert gate.entered.wait(10)
        threads += [post(1, poison)] + [post(i + 2, texts) for i, texts in enumerate(innocent)]
        deadline = time.monotonic() + 10
        while app.state.batcher.queue.qsize() < 1 + len(innocent):
            assert time.monotonic() < deadline
        gate.open.set()
        for t in threads:
            t.join(30)
        health = c.get("/healthz")
        after = c.post("/v1/classify", json={"texts": ["after"]})
    return out, [health, after], gate


def test_panicking_text_fails_only_its_own_request(llama_classifier: Classifier) -> None:
    clf = Classifier(llama_classifier.model, PanickingTokenizer(llama_classifier.tokenizer),
                     llama_classifier.run_config, torch.device("cpu"))
    innocent = [["hello there"], ["win a prize", "call now"], ["ok"]]
    out, (health, after), gate = _batched_round(clf, ["fine", f"{PANIC_WORD}!"], innocent)
    assert gate.calls[1] == 2 + 4  # the poison and the innocent requests did share a batch
    assert out[1].status_code == 422, out[1].text
    err = out[1].json()["error"]
    assert err["code"] == "unprocessable_text" and err["index"] == 1 and PANIC_WORD not in err["message"]
    for i, texts in enumerate(innocent):
        assert out[i + 2].status_code == 200, out[i + 2].text
        assert len(out[i + 2].json()["results"]) == len(texts)
    assert out[0].status_code == 200
    # The worker survived the panic: later requests are answered, and health says so.
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert after.status_code == 200


def test_a_broken_request_is_isolated_from_its_batch(llama_classifier: Classifier) -> None:
    class FailsOnWord(Gate):
        def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
            out = super().predict_proba(texts, batch_size)
            if "boom" in texts:
                raise Panic("not a TextError, and not even an Exception")
            return out

    gate = FailsOnWord(llama_classifier)
    gate.open.set()
    with TestClient(create_app(gate), raise_server_exceptions=False) as c:
        assert c.post("/v1/classify", json={"texts": ["boom"]}).status_code == 500
        assert c.post("/v1/classify", json={"texts": ["fine"]}).status_code == 200
        assert c.get("/healthz").json()["failures"] == 1


def test_healthz_reports_a_stalled_worker(llama_classifier: Classifier) -> None:
    gate = Gate(llama_classifier)
    with TestClient(create_app(gate, ServeSettings(timeout_s=0.2))) as c:
        t = threading.Thread(target=lambda: c.post("/v1/classify", json={"texts": ["stuck"]}))
        t.start()
        assert gate.entered.wait(10)
        time.sleep(0.4)
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "stalled"
        gate.open.set()
        t.join(30)
        deadline = time.monotonic() + 10
        while c.app.state.batcher.batches < 1:  # the stuck pass finishes: healthy again
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.get("/healthz").json()["status"] == "ok"


def test_batching_task_is_restarted_if_it_dies(llama_classifier: Classifier) -> None:
    with TestClient(create_app(llama_classifier, ServeSettings(timeout_s=1))) as c:
        batcher = c.app.state.batcher
        real, crashed = batcher._answer, []

        async def crash_once(jobs: list) -> None:
            if not crashed:  # an escape _run itself never lets through, forced here
                crashed.append(1)
                raise RuntimeError("forced")
            await real(jobs)

        batcher._answer = crash_once
        old = batcher._task
        assert c.post("/v1/classify", json={"texts": ["lost"]}).status_code == 504
        assert batcher._task is not old and batcher.restarts == 1
        assert c.post("/v1/classify", json={"texts": ["still here"]}).status_code == 200
        assert c.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_files_with_lone_surrogates_are_written_as_replacement(llama_classifier: Classifier, tmp_path: Path,
                                                               suffix: str) -> None:
    from gptclf.inference.batch_files import predict_file

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a \\ud800 b", "note": "\\udfff"}\n{"text": "fine", "note": "ok"}\n', encoding="utf-8")
    out = tmp_path / f"out{suffix}"
    assert predict_file(llama_classifier, src, out).rows == 2
    written = out.read_text(encoding="utf-8")  # valid UTF-8
    assert "a \ufffd b" in written and "\ufffd" in written.splitlines()[-2 if suffix == ".jsonl" else 1]


def test_a_file_row_that_cannot_be_classified_is_named(llama_classifier: Classifier, tmp_path: Path) -> None:
    from gptclf.errors import GptclfError
    from gptclf.inference.batch_files import predict_file

    clf = Classifier(llama_classifier.model, PanickingTokenizer(llama_classifier.tokenizer),
                     llama_classifier.run_config, torch.device("cpu"))
    src = tmp_path / "in.csv"
    src.write_text(f"text\nfine\n{PANIC_WORD}\n", encoding="utf-8")
    with pytest.raises(GptclfError, match=r"in\.csv:3: the tokenizer failed \(Panic\)"):
        predict_file(clf, src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_soak_poison_and_panic_clients_next_to_innocent_ones(llama_classifier: Classifier) -> None:
    """12 innocent clients and 2 hostile ones (lone surrogates; the word that panics the
    tokenizer) hammer one server concurrently: zero innocent failures."""
    from concurrent.futures import ThreadPoolExecutor

    clf = Classifier(llama_classifier.model, PanickingTokenizer(llama_classifier.tokenizer),
                     llama_classifier.run_config, torch.device("cpu"))
    innocent_texts = ["ok see you", "WIN a prize, call now", "lunch?", "free entry", "hi"]

    with TestClient(create_app(clf, ServeSettings(batch_wait_ms=2, max_queue=1024)),
                    raise_server_exceptions=False) as c:
        def post(texts: list[str]) -> Any:
            body = json.dumps({"texts": texts})  # escaped, so lone surrogates travel as JSON
            return c.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})

        def innocent(k: int) -> list[int]:
            return [post(innocent_texts[(k + i) % 5: (k + i) % 5 + 1 + i % 3]).status_code for i in range(15)]

        def surrogates(_: int) -> list[int]:
            return [post(["a \ud800", "\udfff b", f"x{i}"]).status_code for i in range(15)]

        def panics(_: int) -> list[int]:
            return [post(["fine", f"{PANIC_WORD} {i}"]).status_code for i in range(15)]

        with ThreadPoolExecutor(14) as pool:
            good = [pool.submit(innocent, k) for k in range(12)]
            sur, pan = pool.submit(surrogates, 0), pool.submit(panics, 0)
            codes = [code for f in good for code in f.result(120)]
        assert codes == [200] * len(codes) and len(codes) == 180
        assert sur.result() == [200] * 15        # surrogates are text like any other
        assert pan.result() == [422] * 15        # the panicking text fails its own request only
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["restarts"] == 0
