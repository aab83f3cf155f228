"""Fuzzing the HTTP request parsing of ``gptclf serve`` (through TestClient: no sockets, fast).

Hypothesis writes request bodies (arbitrary bytes, arbitrary JSON values, nested structures,
huge numbers, unicode, lone surrogates) under assorted content types. The only answers
allowed are the documented ones: 200 with the model's own results for a valid request, the
exact 4xx a model of the rules predicts otherwise, always as ``{"error": {code, message}}``
with no internals shown, and never a 500.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import examples

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from gptclf.inference.serve.app import create_app  # noqa: E402
from gptclf.inference.serve.settings import ServeSettings  # noqa: E402

LIMITS = ServeSettings(max_texts=4, max_text_chars=200, max_body_bytes=4_000)
LEAK = re.compile(r"Traceback|File \"|/work/|/tmp/|/home/|site-packages|\.py\b")
_UNSET = object()


@pytest.fixture(scope="module")
def client(tiny_classifier: Any) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_classifier, LIMITS), raise_server_exceptions=False) as c:
        yield c


def is_json_type(content_type: str | None) -> bool:
    """Whether the body counts as JSON: application/json or application/*+json (not without a
    Content-Type). Written out here, not imported, so that the test checks serve.py's rule."""
    if content_type is None:
        return False
    m = Message()
    m["content-type"] = content_type
    return m.get_content_maintype() == "application" and (
        m.get_content_subtype() == "json" or m.get_content_subtype().endswith("+json"))


def parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _UNSET


def expected_status(body: bytes, content_type: str | None) -> int:
    """The status the documented rules give for this body (serve.py's module docstring)."""
    if len(body) > LIMITS.max_body_bytes:
        return 413
    if not is_json_type(content_type):
        return 415
    if not body:
        return 422  # no body: "texts" is missing
    value = parse(body)
    if value is _UNSET:
        return 400
    if not (isinstance(value, dict) and set(value) == {"texts"} and isinstance(value["texts"], list)
            and all(isinstance(t, str) for t in value["texts"])):
        return 422
    texts = value["texts"]
    if not texts:
        return 422
    if len(texts) > LIMITS.max_texts or any(len(t) > LIMITS.max_text_chars for t in texts):
        return 422  # the schema's maxItems / maxLength: a validation error, not the byte limit
    return 200


def check(client: TestClient, classifier: Any, body: bytes, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/v1/classify", content=body, headers=headers)
    want = expected_status(body, content_type)
    assert r.status_code == want, (r.status_code, want, body[:200], content_type, r.text[:300])
    payload = r.json()
    if want == 200:
        texts = json.loads(body)["texts"]
        got = payload["results"]
        assert [g["label"] for g in got] == [e["label"] for e in classifier.predict(texts)]
        for g, e in zip(got, classifier.predict(texts)):
            assert abs(g["score"] - e["score"]) < 1e-5 and set(g["scores"]) == set(classifier.labels)
    else:
        err = payload["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
        assert want != 400 or err["code"] == "invalid_json", r.text  # every unparsable body, nesting too
        assert not LEAK.search(r.text), r.text


CONTENT_TYPES = st.sampled_from([None, "application/json", "application/json; charset=utf-8",
                                 "application/vnd.api+json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/octet-stream", "application",
                                 ";;;", "application/json; charset=latin-1", "APPLICATION/JSON"])

# Any text Python can hold, lone surrogates included ("\\ud800" is valid JSON).
TEXTS = st.text(st.characters(codec=None), max_size=60) | st.sampled_from(
    ["", "\ud800", "\udfff\ud800", "\x00", "\u202e", "🙂" * 50, "a" * LIMITS.max_text_chars,
     "b" * (LIMITS.max_text_chars + 1), "<|endoftext|>", "\r\n\t"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**320)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXTS)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(TEXTS, inner, max_size=4), max_leaves=20)
# Mostly near-valid requests: {"texts": [...]} with good, wrong or extra members.
REQUESTS = st.one_of(
    st.builds(lambda ts: {"texts": ts}, st.lists(TEXTS, min_size=1, max_size=LIMITS.max_texts)),
    st.builds(lambda ts: {"texts": ts}, st.lists(TEXTS, max_size=LIMITS.max_texts + 2)),
    st.builds(lambda ts, k, v: {"texts": ts, k: v}, st.lists(TEXTS, max_size=3), TEXTS, JSON_VALUES),
    st.builds(lambda v: {"texts": v}, JSON_VALUES),
    JSON_VALUES,
)


@settings(max_examples=examples(150))
@given(body=st.binary(max_size=300) | st.binary(min_size=LIMITS.max_body_bytes - 2,
                                                 max_size=LIMITS.max_body_bytes + 2),
       content_type=CONTENT_TYPES)
def test_arbitrary_bytes_get_only_documented_answers(client: TestClient, tiny_classifier: Any,
                                                     body: bytes, content_type: str | None) -> None:
    check(client, tiny_classifier, body, content_type)


@settings(max_examples=examples(200))
@given(value=REQUESTS, content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                                     "application/problem+json"]) | CONTENT_TYPES,
       ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_arbitrary_json_gets_only_documented_answers(client: TestClient, tiny_classifier: Any, value: Any,
                                                     content_type: str | None, ensure_ascii: bool,
                                                     indent: int | None) -> None:
    try:
        body = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8: send it escaped
        body = json.dumps(value, indent=indent).encode("utf-8")
    check(client, tiny_classifier, body, content_type)


@settings(max_examples=examples(20))
@given(depth=st.integers(1, 1900), kind=st.sampled_from(["[", '{"a":']), wrap=st.booleans())
def test_deep_nesting_gets_a_4xx(client: TestClient, tiny_classifier: Any, depth: int, kind: str,
                                 wrap: bool) -> None:
    close = "]" if kind == "[" else "}"
    inner = kind * depth + "1" + close * depth
    body = (('{"texts": ' + inner + "}") if wrap else inner).encode()
    check(client, tiny_classifier, body, "application/json")


@pytest.mark.parametrize("wrap", [False, True])
def test_nesting_past_the_parsers_recursion_limit_is_a_400(tiny_classifier: Any, wrap: bool) -> None:
    # 100,000 levels (200 KB, under the default body limit): json.loads raises RecursionError,
    # which must surface as the documented 400 invalid_json, not a 500 or a crash.
    inner = "[" * 100_000 + "]" * 100_000
    body = ('{"texts": ' + inner + "}") if wrap else inner
    with TestClient(create_app(tiny_classifier), raise_server_exceptions=False) as c:
        r = c.post("/v1/classify", content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"] and not LEAK.search(r.text), r.text
        assert r.json()["error"]["code"] == "invalid_json", r.text  # the documented code, not http_error
        assert c.post("/v1/classify", json={"texts": ["still fine"]}).status_code == 200
