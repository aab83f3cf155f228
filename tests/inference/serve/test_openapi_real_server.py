"""schemathesis against a real ``gptclf serve``: every generated request (valid ones, and
ones that break the schema on purpose) gets an answer the OpenAPI schema declares, valid
requests are accepted, invalid ones refused with a 4xx, and nothing is a 5xx. The limits
in the schema are this server's own (set by its flags), so a limit the schema leaves out
shows up as a valid request refused."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_run, serve_process, tiny_gpt2_dir

pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
pytest.importorskip("schemathesis")

# Small limits, so that generated requests cross them: with a text bound of 8 characters,
# a schema without maxLength lets schemathesis send a longer text as valid (and the test
# fails on the 422); likewise without minItems or maxItems. The body bound stays far above
# the largest request the schema allows (4 texts of 8 characters, each up to 12 bytes as a
# JSON-escaped surrogate pair), so a valid request is never too big.
FLAGS = ("--max-texts", "4", "--max-text-chars", "8", "--max-body-bytes", "16000")


def run_schemathesis(url: str, tmp_path: Path, max_examples: int = 100) -> dict:
    """``schemathesis run`` with every check and no configuration file (a request that breaks the
    schema is refused with 422, a status schemathesis expects), deterministic, one worker; its JSON report."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
           "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", str(max_examples), "--generation-deterministic", "--workers", "1",
           "--request-timeout", "30", "--report", "json", "--report-json-path", str(report)]
    # subprocess.run kills schemathesis if it overruns; the server is the fixture's to stop.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert report.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(report.read_text())
    out["output"] = r.stdout[-6000:]
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two runs of one base, single-label and multi-label: a schema with a model name to pick and
    two kinds of prediction."""
    root = tmp_path_factory.mktemp("two")
    base = tiny_gpt2_dir(root / "base", n_layer=2, n_embd=32, n_head=2, n_positions=64)
    return [f"spam={make_run(root / 'spam', base, '1', 1)}",
            f"tags={make_run(root / 'tags', base, 'last_layer', 2, labels=('x', 'y'), task='multi-label', thresholds={'x': 0.5, 'y': 0.4})}"]


@pytest.fixture(scope="module", params=["one model", "two models"])
def server(request: pytest.FixtureRequest, random_run: Path) -> Iterator[tuple[str, Any]]:
    """One real server per case; serve_process stops it (terminate, then kill) whatever happens."""
    model = random_run if request.param == "one model" else request.getfixturevalue("two_runs")
    with serve_process(model, *FLAGS) as (url, proc):
        yield url, proc


def test_schema_states_this_servers_limits_and_errors(server: tuple[str, Any]) -> None:
    url, _ = server
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as r:
        schema = json.load(r)
    components = schema["components"]["schemas"]
    for path in ("/v1/classify", "/classify", "/predict"):
        op = schema["paths"][path]["post"]
        assert op["requestBody"]["x-max-body-bytes"] == 16000, path
        assert set(op["responses"]) == {"200", "400", "404", "408", "413", "415", "422", "500", "503", "504"}
        assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    texts = components["ClassifyRequest"]["properties"]["texts"]
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
        names = [m["id"] for m in json.load(r)["data"]]
    model = components["ClassifyRequest"]["properties"]["model"]
    assert model["anyOf"][0]["enum"] == [*names, "*"] and model["anyOf"][1]["items"]["enum"] == names
    # With several models a request must name one (which would it be?); with one it may not.
    assert ("model" in components["ClassifyRequest"].get("required", [])) == (len(names) > 1)
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 4, 8)
    for name in ("VllmClassificationRequest", "TeiPredictRequest"):  # one text, or a bounded list of them
        one, many = components[name]["properties"]["input" if "Vllm" in name else "inputs"]["anyOf"]
        assert (one["maxLength"], many["minItems"], many["maxItems"], many["items"]["maxLength"]) == (8, 1, 4, 8)
    for path in ("/healthz", "/v1/model", "/v1/models", "/metrics"):
        assert {"200", "408", "413", "500"} <= set(schema["paths"][path]["get"]["responses"]), path
    for path, ops in schema["paths"].items():  # every answer has a declared body
        for method, o in ops.items():
            for status, resp in o["responses"].items():
                if path == "/metrics" and status == "200":
                    assert "text/plain" in resp["content"]
                    continue
                ref = json.dumps(resp["content"]["application/json"]["schema"])
                if int(status) >= 400 and not (path == "/healthz" and status == "503"):
                    assert ref.endswith('/ErrorResponse"}'), (path, method, status)
                else:
                    assert "$ref" in ref, (path, method, status)
    assert components["ErrorDetail"]["additionalProperties"] is False
    limits = components["Limits"]["properties"]
    assert (limits["max_texts"]["const"], limits["max_text_chars"]["const"], limits["max_body_bytes"]["const"]) \
        == (4, 8, 16000)


def test_schemathesis_against_a_real_server(server: tuple[str, Any], tmp_path: Path) -> None:
    url, proc = server
    report = run_schemathesis(url, tmp_path)
    assert proc.poll() is None, "the server died"
    assert not report["failures"] and not report["errors"], report["output"]
    assert report["exit_code"] == 0 and report["complete"], report["output"]
    # /healthz, /v1/model, /v1/models, /v1/classify, /classify, /predict, /metrics
    assert report["operations"]["tested"] == 7 and report["operations"]["errored"] == 0, report["operations"]
    assert report["test_cases"]["generated"] >= 100, report["test_cases"]
    assert not any(report["warnings"].values()), report["warnings"]
    # Every operation got requests it accepted (the run reached the model, not only errors).
    for op, phases in report["valid_rates"].items():
        assert phases["fuzzing"]["accepted"] > 0 and phases["fuzzing"]["rejected"] == 0, (op, phases)
