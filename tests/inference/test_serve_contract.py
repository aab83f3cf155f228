"""Issue 15, findings 3, 7 and 13: the OpenAPI schema states every limit and error response
(and a schemathesis run against the real app finds nothing), results say whether a text
was truncated or empty, and the page's examples are the model's own."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from gptclf.inference.serve.app import create_app  # noqa: E402
from gptclf.inference.serve.settings import ServeSettings  # noqa: E402

SETTINGS = ServeSettings(max_texts=4, max_text_chars=2000, batch_wait_ms=0)


@pytest.fixture(scope="module")
def app(tiny_classifier):  # noqa: ANN001, ANN201
    return create_app(tiny_classifier, SETTINGS)


def test_schema_declares_the_limits_and_errors(app) -> None:  # noqa: ANN001
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/classify"]["post"]
    bodies = [x["$ref"].rsplit("/", 1)[-1] for x in op["requestBody"]["content"]["application/json"]["schema"]["anyOf"]]
    assert bodies == ["ClassifyRequest", "VllmClassificationRequest"]  # ours, or vLLM's (with input)
    texts = schema["components"]["schemas"]["ClassifyRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 4, 2000)
    for code in ("400", "408", "413", "415", "422", "500", "503", "504"):
        assert code in op["responses"], code
        assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    pred = schema["components"]["schemas"]["Prediction"]
    assert {"truncated", "empty"} <= set(pred["required"])


def test_results_mark_truncated_and_empty_texts(app, tiny_classifier) -> None:  # noqa: ANN001
    long_text = "free prize call now " * 90  # 1,800 characters, over the run's 256 tokens
    assert tiny_classifier.truncated([long_text]) == [True]
    with TestClient(app) as client:
        r = client.post("/v1/classify", json={"texts": ["hello there", long_text, " "]})
        assert r.status_code == 200
        res = r.json()["results"]
        assert [x["truncated"] for x in res] == [False, True, False]
        assert [x["empty"] for x in res] == [False, False, True]
        assert client.post("/v1/classify", json={"texts": []}).status_code == 422


def test_page_examples_are_the_models_own(app, tiny_run: Path) -> None:  # noqa: ANN001
    import json

    stored = json.loads((tiny_run / "config.json").read_text())["examples"]
    with TestClient(app) as client:
        info = client.get("/v1/model").json()
        page = client.get("/").text
    assert info["examples"] == stored and {e["label"] for e in stored} == {"ham", "spam"}
    assert "WINNER" not in page  # no hard-coded SMS examples in the page itself


def test_schemathesis_finds_no_failure(app) -> None:  # noqa: ANN001
    """Generated requests for every operation: every answer matches the schema (status codes,
    bodies, content types) and nothing is a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    failures: list[str] = []
    with TestClient(app):  # runs the lifespan: the batcher that answers the requests
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert any(op.path == "/v1/classify" for op in operations)
        for operation in operations:

            @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy())
            def run(case) -> None:  # noqa: ANN001
                try:
                    case.call_and_validate()
                except Exception as e:  # collect, then report them all
                    failures.append(f"{operation.label}: {type(e).__name__}: {str(e)[:300]}")

            run()
    assert not failures, "\n".join(failures[:5])
