"""Several models behind one ``gptclf serve`` (serve/models.py through inference/group.py): each
model answers as its run served alone, in every combination (same base at different depths,
different bases, LoRA, self-contained), whether asked alone, in a list or with ``"*"``; unknown
names answer 404; one request's bad text fails nobody else; vLLM's ``/classify`` and TEI's
``/predict`` (serve/compat.py) keep their contracts; ``/metrics`` parses with prometheus-client's
own parser; a run whose base is missing is refused at start, naming it.

Equal within 1e-5 (as tests/inference/test_model_group.py argues): the shared path does the
same fp32 arithmetic as the run alone; only which rows share a batch differs (~1e-7)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from helpers import env_with, group_runs, make_run, tiny_gpt2_dir  # noqa: E402

from gptclf.errors import TextError  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402
from gptclf.inference.group import ModelGroup  # noqa: E402
from gptclf.inference.serve.app import create_app  # noqa: E402
from gptclf.inference.serve.settings import ServeSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["win a free prize now", "see you at lunch", "", "URGENT call 0800 to claim",
         "ok " * 40, "are we still on for tomorrow?", "Free entry!!! txt WIN", "lol"]
NAMES = ["one", "two", "head", "multi", "lora", "whole", "other"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return group_runs(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def alone(runs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each run served alone, as `gptclf serve --model RUN` serves it today."""
    out = {}
    for name, d in runs.items():
        with TestClient(create_app(Classifier.load(d, device="cpu"))) as c:
            r = c.post("/v1/classify", json={"texts": TEXTS})
            assert r.status_code == 200, r.text
            out[name] = np.array([list(x["scores"].values()) for x in r.json()["results"]])
    return out


@pytest.fixture(scope="module")
def client(runs: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(ModelGroup.load([(n, runs[n]) for n in NAMES], device="cpu"))) as c:
        yield c


def _scores(results: list[dict[str, Any]]) -> np.ndarray:
    return np.array([list(x["scores"].values()) for x in results])


def test_every_model_from_one_request_answers_as_served_alone(client: TestClient, alone: dict[str, np.ndarray]) -> None:
    r = client.post("/v1/classify", json={"model": "*", "texts": TEXTS})
    assert r.status_code == 200, r.text
    models = r.json()["models"]
    assert list(models) == NAMES
    for name in NAMES:
        assert np.abs(_scores(models[name]["results"]) - alone[name]).max() <= 1e-5, name
    assert models["multi"]["results"][0].keys() == {"labels", "scores", "truncated", "empty"}
    assert np.abs(alone["one"] - alone["two"]).max() > 0.01  # the runs differ: equality means something


@pytest.mark.parametrize("pair", list(itertools.combinations(NAMES, 2)))
def test_every_pair_by_list_answers_as_each_alone(runs: dict[str, Path], alone: dict[str, np.ndarray],
                                                 pair: tuple[str, str]) -> None:
    group = ModelGroup.load([(n, runs[n]) for n in pair], device="cpu")
    with TestClient(create_app(group)) as c:
        r = c.post("/v1/classify", json={"model": list(pair), "texts": TEXTS})
        assert r.status_code == 200, r.text
        for name in pair:
            assert np.abs(_scores(r.json()["models"][name]["results"]) - alone[name]).max() <= 1e-5, (pair, name)
        one = c.post("/v1/classify", json={"model": pair[1], "texts": TEXTS[:3]}).json()
        assert one["model"] == pair[1] and np.abs(_scores(one["results"]) - alone[pair[1]][:3]).max() <= 1e-5


def test_model_names_that_are_not_served(client: TestClient) -> None:
    for model in ("nope", ["one", "nope"]):
        r = client.post("/v1/classify", json={"model": model, "texts": ["hi"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model", r.text
        assert "one, two" in r.json()["error"]["message"]
    for model in ([], None, 3, ["one", 3]):
        r = client.post("/v1/classify", json={"model": model, "texts": ["hi"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (model, r.text)
    # With several models, a request must say which.
    for path, body in (("/v1/classify", {"texts": ["hi"]}), ("/classify", {"input": "hi"})):
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "model_required", r.text
        assert "this server has 7 models" in r.json()["error"]["message"]
    assert client.post("/classify", json={"model": "nope", "input": "hi"}).status_code == 404
    assert client.post("/predict", json={"model": "nope", "inputs": "hi"}).status_code == 404


def test_models_list_names_labels_bases_metrics_and_limits(client: TestClient, runs: dict[str, Path]) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == NAMES
    by = {m["id"]: m for m in body["data"]}
    assert by["head"]["labels"] == ["a", "b", "c"] and by["multi"]["multi_label"] is True
    base = {n: by[n]["base_fingerprint"] for n in NAMES}
    assert base["one"] == base["two"] == base["lora"] and base["other"] not in (None, base["one"])
    assert base["whole"] is None  # self-contained: no base to name
    assert by["one"]["metrics"]["test_accuracy"] == 0.5 and by["one"]["limits"]["max_texts"] == 64
    assert str(runs["one"].parent) not in json.dumps(body), "the list leaks a server path"
    assert client.get("/v1/model").json()["labels"] == by["one"]["labels"]  # the first model


def test_vllm_classify_contract(client: TestClient, alone: dict[str, np.ndarray], runs: dict[str, Path]) -> None:
    for path in ("/classify", "/v1/classify"):
        r = client.post(path, json={"model": "head", "input": TEXTS[:3]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body.keys() == {"id", "object", "created", "model", "data", "usage"}
        assert body["object"] == "list" and body["model"] == "head" and body["id"].startswith("classify-")
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        probs = np.array([d["probs"] for d in body["data"]])
        assert np.abs(probs - alone["head"][:3]).max() <= 1e-5
        assert [d["label"] for d in body["data"]] == [["a", "b", "c"][i] for i in probs.argmax(1)]
        assert {d["num_classes"] for d in body["data"]} == {3}
        tokens = sum(len(x) for x in Classifier.load(runs["head"], device="cpu").encode(TEXTS[:3]))
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                 "prompt_tokens_details": None}
    one = client.post("/classify", json={"model": "one", "input": TEXTS[0]}).json()
    assert len(one["data"]) == 1
    for bad in ({"model": "*", "input": "x"}, {"model": ["one"], "input": "x"}, {"model": "one", "input": []},
                {"model": "one", "input": 3}, {"model": "one", "input": "x", "texts": ["x"]}):
        r = client.post("/classify", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = client.post("/classify", json={"model": "one", "input": ["x"] * 65})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_texts"


def test_tei_predict_contract(client: TestClient, alone: dict[str, np.ndarray]) -> None:
    one = client.post("/predict", json={"inputs": TEXTS[0]}).json()  # no model: the first
    assert [set(x) for x in one] == [{"label", "score"}] * 2
    assert [x["score"] for x in one] == sorted((x["score"] for x in one), reverse=True)  # best first
    assert abs({x["label"]: x["score"] for x in one}["spam"] - alone["one"][0][1]) <= 1e-5
    many = client.post("/predict", json={"inputs": TEXTS[:3], "model": "head"}).json()
    assert len(many) == 3 and all(len(x) == 3 for x in many)
    raw = client.post("/predict", json={"inputs": TEXTS[:3], "model": "head", "raw_scores": True}).json()
    for probs, scores in zip(alone["head"][:3], raw):
        got = {x["label"]: x["score"] for x in scores}
        assert np.allclose([got[k] for k in "abc"], np.log(probs), atol=1e-4)  # log-probabilities
    for bad in ({"inputs": "x", "raw_scores": 1}, {"inputs": [], "model": "one"}, {"inputs": "x", "model": "*"},
                {"inputs": "x", "extra": 1}):
        assert client.post("/predict", json=bad).status_code == 422, bad


class Poisoned:
    """A run's classifier that cannot take texts containing POISON, its first call held at a gate."""

    def __init__(self, clf: Any) -> None:
        self.clf, self.labels, self.max_length = clf, clf.labels, clf.max_length
        self.config, self.directory = clf.config, None
        self.gate, self.entered = threading.Event(), threading.Event()

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(30)
        bad = {i: "poisoned" for i, t in enumerate(texts) if "POISON" in t}
        if bad:
            raise TextError(bad)
        return self.clf.predict_proba(texts, batch_size)


def test_a_bad_text_for_one_model_fails_nobody_else(runs: dict[str, Path], alone: dict[str, np.ndarray]) -> None:
    poison = Poisoned(Classifier.load(runs["head"], device="cpu"))
    group = ModelGroup({"one": Classifier.load(runs["one"], device="cpu"), "two": Classifier.load(runs["two"], device="cpu"),
                        "head": poison})
    app = create_app(group, ServeSettings(batch_wait_ms=1))
    with TestClient(app) as c:
        out: dict[str, Any] = {}

        def post(key: str, body: dict) -> threading.Thread:
            t = threading.Thread(target=lambda: out.__setitem__(key, c.post("/v1/classify", json=body)))
            t.start()
            return t

        threads = [post("first", {"model": "head", "texts": [TEXTS[0]]})]
        assert poison.entered.wait(10)  # the model is busy: the next three wait and share a pass
        threads += [post("bad", {"model": "*", "texts": [TEXTS[1], "POISON pill"]}),
                    post("one", {"model": "one", "texts": TEXTS}),
                    post("all", {"model": ["two", "head"], "texts": TEXTS[:2]})]
        import time
        deadline = time.monotonic() + 10
        while app.state.batcher.queue.qsize() < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        poison.gate.set()
        for t in threads:
            t.join(30)
    assert out["first"].status_code == 200
    err = out["bad"].json()["error"]
    assert out["bad"].status_code == 422 and err["code"] == "unprocessable_text" and err["index"] == 1
    assert out["one"].status_code == 200
    assert np.abs(_scores(out["one"].json()["results"]) - alone["one"]).max() <= 1e-5
    both = out["all"].json()["models"]
    assert np.abs(_scores(both["two"]["results"]) - alone["two"][:2]).max() <= 1e-5
    assert np.abs(_scores(both["head"]["results"]) - alone["head"][:2]).max() <= 1e-5


def test_metrics_parse_with_prometheus_clients_parser(runs: dict[str, Path]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    group = ModelGroup.load([(n, runs[n]) for n in ("one", "two")], device="cpu")
    with TestClient(create_app(group, ServeSettings(max_texts=4))) as c:
        for _ in range(3):
            assert c.post("/v1/classify", json={"model": "*", "texts": ["hi", "word " * 200]}).status_code == 200
        assert c.post("/v1/classify", json={"model": "two", "texts": ["x"] * 5}).status_code == 422
        assert c.post("/classify", json={"model": "one", "input": "hi"}).status_code == 200
        assert c.get("/v2/none").status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    count = {(s.labels["endpoint"], s.labels["model"], s.labels["status"]): s.value
             for s in fams["gptclf_requests"].samples if s.name == "gptclf_requests_total"}
    assert count[("/v1/classify", "one", "200")] == 3 and count[("/v1/classify", "two", "200")] == 3
    assert count[("/v1/classify", "two", "422")] == 1 and count[("/classify", "one", "200")] == 1
    assert count[("other", "", "404")] == 1  # unknown paths share one series
    latency = {s.labels.get("endpoint"): s.value for s in fams["gptclf_request_seconds"].samples
               if s.name == "gptclf_request_seconds_count"}
    assert latency["/v1/classify"] == 4
    batches = {s.name: s.value for s in fams["gptclf_batch_texts"].samples}
    assert batches["gptclf_batch_texts_count"] == 4 and batches["gptclf_batch_texts_sum"] == 7
    truncated = {s.labels["model"]: s.value for s in fams["gptclf_texts_truncated"].samples
                 if s.name == "gptclf_texts_truncated_total"}
    assert truncated == {"one": 3, "two": 3}  # 200 words: over the runs' 48 tokens
    assert [s.value for s in fams["gptclf_queue_depth"].samples] == [0]
    load = {s.labels["model"]: s.value for s in fams["gptclf_model_load_seconds"].samples}
    assert set(load) == {"one", "two"} and all(v > 0 for v in load.values())
    assert fams["process_resident_memory_bytes"].samples[0].value > 10_000_000


def test_a_run_whose_base_is_missing_is_refused_at_start(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    base = tiny_gpt2_dir(tmp_path / "gone-base", n_layer=2, n_embd=32, n_head=2, n_positions=64)
    orphan = make_run(tmp_path / "orphan", base, "1", 8)
    shutil.rmtree(base)
    r = subprocess.run([sys.executable, "-m", "gptclf", "serve", "--model", f"spam={runs['one']}",
                        "--model", f"orphan={orphan}", "--port", "0"], capture_output=True, text=True,
                       timeout=120, env=env_with(HF_HUB_OFFLINE="1"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "'orphan'" in r.stderr and "gone-base" in r.stderr, r.stderr


@pytest.mark.slow
def test_bench_script_runs_end_to_end(tmp_path: Path) -> None:
    """scripts/bench_multi_serve.py --quick: four real servers, every figure and ratio written."""
    from helpers import ROOT

    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_multi_serve.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=env_with(HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures["setups"]) == {"shared", "separate"} and all(m["errors"] == 0 for m in figures["setups"].values())
    assert set(figures["ratios"]) == {"texts_per_s shared / separate", "p99 shared / separate",
                                      "rss shared / one model", "rss shared / separate"}
    assert "texts_per_s shared / separate" in r.stdout
