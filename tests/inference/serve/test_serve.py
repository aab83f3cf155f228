"""gptclf serve: the API through TestClient (every error path), server-side batching,
the queue bound and the timeout, a bounded load test against a real ``gptclf serve``,
and the web page in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from gptclf.inference.serve.app import create_app  # noqa: E402
from gptclf.inference.serve.settings import ServeSettings  # noqa: E402

from helpers import ROOT, free_port, serve_process  # noqa: E402

SPAM = "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! Call 09061701461"
HAM = "Ok lar... Joking wif u oni..."


class Gated:
    """The real classifier behind a gate the test opens: lets a test hold the model busy."""

    def __init__(self, clf: Any) -> None:
        self.clf = clf
        self.labels, self.max_length = clf.labels, clf.max_length
        self.config, self.directory = clf.config, clf.directory
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(len(texts))
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        return self.clf.predict_proba(texts, batch_size)


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    t = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def client(tiny_classifier: Any) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_classifier, ServeSettings(max_texts=8, max_text_chars=500,
                                                              max_body_bytes=20_000))) as c:
        yield c


# ------------------------------------------------------------------------ happy path


def test_classify_returns_label_score_and_scores_per_text(client: TestClient, tiny_classifier: Any) -> None:
    r = client.post("/v1/classify", json={"texts": [SPAM, HAM, ""]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    assert [x["label"] for x in results[:2]] == ["spam", "ham"]
    expected = tiny_classifier.predict([SPAM, HAM, ""])
    for got, want in zip(results, expected):
        assert set(got) == {"label", "score", "scores", "truncated", "empty"} and set(got["scores"]) == {"ham", "spam"}
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert sum(got["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_model_health_page_and_openapi(client: TestClient, tiny_run: Path) -> None:
    m = client.get("/v1/model").json()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert m["labels"] == ["ham", "spam"] and m["max_length"] == 256 and m["architecture"] == "gpt2"
    assert m["metrics"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert set(m["metrics"]["test_per_class"]) == {"ham", "spam"} and m["limits"]["max_texts"] == 8
    assert str(tiny_run.parent) not in json.dumps(m), "the model info leaks a server path"
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="text"' in page.text and "v1/classify" in page.text
    schema = client.get("/openapi.json").json()
    assert "/v1/classify" in schema["paths"] and "ClassifyRequest" in json.dumps(schema)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b'{"texts": "one string"}', 422, "invalid_request"),
    (b'{"texts": [1, 2]}', 422, "invalid_request"),
    (b'{"texts": [null]}', 422, "invalid_request"),
    (b'{"text": ["a"]}', 422, "invalid_request"),
    (b'["a"]', 422, "invalid_request"),
    (b'{"texts": []}', 422, "empty_texts"),
    (json.dumps({"texts": ["x"] * 9}).encode(), 422, "too_many_texts"),
    (json.dumps({"texts": ["ok", "y" * 501]}).encode(), 422, "text_too_long"),
    (json.dumps({"texts": ["z" * 400] * 8, "pad": "p" * 20_000}).encode(), 413, "body_too_large"),
])
def test_bad_requests_get_a_clear_json_error(client: TestClient, body: bytes, status: int, code: str) -> None:
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert "Traceback" not in r.text and "/src/" not in r.text


def test_body_limit_holds_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        yield b'{"texts": ["'
        for _ in range(30):
            yield b"a" * 1000
        yield b'"]}'

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/classify")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_internal_errors_hide_details(tiny_classifier: Any) -> None:
    class Broken(Gated):
        def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
            raise RuntimeError("secret detail in /home/someone/model.py")

    with TestClient(create_app(Broken(tiny_classifier)), raise_server_exceptions=False) as c:
        r = c.post("/v1/classify", json={"texts": ["hi"]})
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
        assert c.get("/healthz").status_code == 200  # and the service lives on


def test_cors_is_off_unless_asked(tiny_classifier: Any) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    with TestClient(create_app(tiny_classifier)) as c:
        r = c.post("/v1/classify", json={"texts": ["hi"]}, headers=origin)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with TestClient(create_app(tiny_classifier, ServeSettings(cors_origins=["https://elsewhere.example"]))) as c:
        r = c.post("/v1/classify", json={"texts": ["hi"]}, headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://elsewhere.example"


# -------------------------------------------------- batching, queue bound, timeout


def _post_in_thread(c: TestClient, texts: list[str], out: list) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(c.post("/v1/classify", json={"texts": texts})))
    t.start()
    return t


@pytest.mark.parametrize("batching", [True, False])
def test_waiting_requests_share_one_forward_pass(tiny_classifier: Any, batching: bool) -> None:
    gated = Gated(tiny_classifier)
    app = create_app(gated, ServeSettings(batching=batching, batch_wait_ms=1, max_batch_size=64))
    with TestClient(app) as c:
        out: list = []
        threads = [_post_in_thread(c, [SPAM], out)]
        assert gated.entered.wait(10)            # the model is busy with the first request...
        threads += [_post_in_thread(c, [HAM, SPAM], out) for _ in range(5)]
        wait_until(lambda: app.state.batcher.queue.qsize() == 5)  # ...while five more wait
        gated.gate.set()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in out] == [200] * 6
        assert [len(r.json()["results"]) for r in out].count(2) == 5
        # With batching the five waiting requests go through the model together.
        assert gated.calls == ([1, 10] if batching else [1] + [2] * 5)


def test_full_queue_answers_503_with_retry_after(tiny_classifier: Any) -> None:
    gated = Gated(tiny_classifier)
    app = create_app(gated, ServeSettings(max_queue=1, retry_after_s=2))
    with TestClient(app) as c:
        out: list = []
        first = _post_in_thread(c, ["a"], out)
        assert gated.entered.wait(10)
        second = _post_in_thread(c, ["b"], out)
        wait_until(lambda: app.state.batcher.queue.full())
        # The model is busy in its worker thread; the event loop still answers at once.
        t = time.perf_counter()
        health = c.get("/healthz").json()
        assert health["queued"] == 1 and time.perf_counter() - t < 2
        r = c.post("/v1/classify", json={"texts": ["c"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "overloaded"
        gated.gate.set()
        first.join(30)
        second.join(30)
        assert [x.status_code for x in out] == [200, 200]
        assert c.post("/v1/classify", json={"texts": ["d"]}).status_code == 200


def test_slow_model_answers_504_and_recovers(tiny_classifier: Any) -> None:
    gated = Gated(tiny_classifier)
    with TestClient(create_app(gated, ServeSettings(timeout_s=0.3))) as c:
        t = time.perf_counter()
        r = c.post("/v1/classify", json={"texts": ["slow"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert time.perf_counter() - t < 5
        gated.gate.set()
        assert c.post("/v1/classify", json={"texts": [HAM]}).status_code == 200


# ------------------------------------------------------------ a real gptclf serve


@contextmanager
def gptclf_serve(model: Path, *flags: str) -> Iterator[str]:
    with serve_process(model, *flags) as (url, _):
        yield url


@pytest.fixture(scope="module")
def live_server(tiny_run: Path) -> Iterator[str]:
    with gptclf_serve(tiny_run) as url:
        yield url


def _healthz(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
        return json.loads(r.read())


def _classify(url: str, text: str) -> dict:
    import urllib.request

    req = urllib.request.Request(url + "/v1/classify", data=json.dumps({"texts": [text]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["results"][0]


def test_load_with_and_without_batching(live_server: str, tiny_run: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from loadtest import run_load
    finally:
        sys.path.pop(0)
    import asyncio

    before = _healthz(live_server)
    batched = asyncio.run(run_load(live_server, concurrency=32, requests=2000))
    after = _healthz(live_server)
    with gptclf_serve(tiny_run, "--no-batching") as url:
        single = asyncio.run(run_load(url, concurrency=32, requests=2000))
        single_health = _healthz(url)
    for name, r in (("batching", batched), ("no batching", single)):
        print(f"\n{name}: {r.requests_per_second:.0f} requests/s, p50 {r.p50_ms:.1f} ms, "
              f"p99 {r.p99_ms:.1f} ms ({r.requests} requests, {r.concurrency} clients)")
        assert r.requests == 2000 and r.errors == 0, r.first_error
        assert r.status_counts == {"200": 2000}
    # Under 32 concurrent clients the batcher puts several requests in each forward pass;
    # without batching each request is a forward pass of its own.
    n_batches = after["batches"] - before["batches"]
    assert after["texts"] - before["texts"] == 2000 and n_batches < 1000
    assert single_health["batches"] == 2000


def test_loadtest_script_cli_reports_errors(tmp_path: Path) -> None:
    # Nothing listens on this port: every request fails and the script exits 1.
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url",
                        f"http://127.0.0.1:{free_port()}", "--requests", "5", "--concurrency", "2", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert json.loads(r.stdout)["errors"] == 5


# ---------------------------------------------------------- the page in a browser


def _browser() -> str:
    """The system chromium; in CI a missing browser is a failure, locally a skip."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    why = None
    if exe is None:
        why = "the system chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "the playwright python package is not installed (pip install playwright)"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run in CI: {why}")
        pytest.skip(why)
    return exe  # type: ignore[return-value]


def test_web_page_classifies_a_message_in_a_real_browser(live_server: str, tiny_run: Path) -> None:
    exe = _browser()
    from playwright.sync_api import sync_playwright

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server + "/")
            page.wait_for_selector("#test-accuracy", timeout=15_000)
            assert f"{metrics['test_accuracy'] * 100:.1f} %" in page.inner_text("#test-accuracy")
            page.fill("#text", SPAM)
            page.click("#classify")
            page.wait_for_selector("#label", timeout=15_000)
            assert page.inner_text("#label") == "spam"
            assert page.inner_text("#score").strip().endswith("%")
            html_text = "<img src=x onerror=alert(1)> " + HAM
            want = _classify(live_server, html_text)["label"]
            page.fill("#text", html_text)
            page.keyboard.press("Control+Enter")
            page.wait_for_function("document.querySelector('#label') && "
                                   f"document.querySelector('#label').textContent === {json.dumps(want)}",
                                   timeout=15_000)
            # The examples are the run's own (config.json "examples"); one fills the box and classifies.
            example = json.loads((tiny_run / "config.json").read_text())["examples"][1]["text"]
            page.click("ul.examples a >> nth=1")
            page.wait_for_function(f"document.querySelector('#text').value === {json.dumps(example)}",
                                   timeout=15_000)
            assert page.locator("#result img").count() == 0  # user text is never parsed as HTML
            assert not errors, errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def two_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server of two runs of one base: a single-label one and a multi-label one."""
    from helpers import make_run, tiny_gpt2_dir

    root = tmp_path_factory.mktemp("page-two")
    base = tiny_gpt2_dir(root / "base", n_layer=2, n_embd=32, n_head=2, n_positions=64)
    spam = make_run(root / "spam", base, "1", 1)
    tags = make_run(root / "tags", base, "last_layer", 2, labels=("x", "y"), task="multi-label",
                    thresholds={"x": 0.5, "y": 0.4})
    with serve_process([f"spam={spam}", f"tags={tags}"]) as (url, _):
        yield url


def _answer(url: str, model: Any, text: str) -> dict:
    import urllib.request

    req = urllib.request.Request(url + "/v1/classify", data=json.dumps({"model": model, "texts": [text]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _shown(res: dict) -> str:
    """What the page shows as a result's decision."""
    return ", ".join(res["labels"]) or "(no label)" if "labels" in res else res["label"]


def test_web_page_picks_a_model_or_all_of_them(two_model_server: str) -> None:
    exe = _browser()
    from playwright.sync_api import sync_playwright

    url, text = two_model_server, "win a free prize now"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#picker-row:not([hidden])", timeout=15_000)
            assert page.eval_on_selector_all("#picker option", "os => os.map(o => o.value)") == ["spam", "tags", "*"]
            page.select_option("#picker", "tags")
            assert "tags" in page.inner_text("#model") and "x, y" in page.inner_text("#model")
            page.fill("#text", text)
            page.click("#classify")
            want = _shown(_answer(url, "tags", text)["results"][0])
            page.wait_for_function(f"document.querySelector('#label') && document.querySelector('#label').textContent"
                                   f" === {json.dumps(want)}", timeout=15_000)
            page.select_option("#picker", "*")
            page.click("#classify")
            page.wait_for_function("document.querySelectorAll('.model-result').length === 2", timeout=15_000)
            every = _answer(url, "*", text)["models"]
            for name in ("spam", "tags"):
                shown = page.inner_text(f".model-result[data-model={name}] .label")
                assert shown == _shown(every[name]["results"][0]), name
            assert not errors, errors
        finally:
            browser.close()
