"""``gptclf serve``: the classifier behind an HTTP API and a small web page.

Endpoints: ``POST /v1/classify``, ``GET /v1/model``, ``GET /healthz``, ``GET /`` (the
page), ``GET /openapi.json``.

Concurrent requests are batched on the server: the first waiting request opens a short
collection window (``batch_wait_ms``), every request that arrives in it (up to
``max_batch_size`` texts) joins the same forward pass. While the model runs, new
requests queue up and form the next batch, so throughput grows with load. The model
runs in one worker thread, so the event loop keeps answering (health checks, the page,
errors) while it computes.

One request's bad text never fails another's: a text the model cannot tokenize or
score answers 422 ``unprocessable_text`` naming its ``index`` in that request, and the
other requests batched with it are answered normally (see batcher.py). Lone
surrogates (``"\\ud800"`` is valid JSON) are replaced by U+FFFD before any tokenizer sees
them, on every model family. ``/healthz`` answers 503 with ``"status": "stalled"`` when
one forward pass has run longer than ``--timeout``, so an orchestrator can restart it.

Failure modes are explicit: a full queue answers 503 with ``Retry-After``, a request
that waits too long 504, a body over its byte limit 413, texts that break the schema
(none, too many, too long) 422, a body not sent as JSON 415, a client too slow to send
its body 408 (one too slow to send its headers has its connection closed), all as
``{"error": {"code", "message"}}``; an unexpected error answers a generic 500 with no
stack trace or file path.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_type_hints

import numpy as np

from ...errors import GptclfError
from ...files import file_inside, read_json_object
from .settings import ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, create_model
    from pydantic.json_schema import SkipJsonSchema
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise GptclfError(f"serving needs FastAPI and uvicorn ({e.name} is missing)",
                      hint="pip install 'gptclf[serve]'") from None

from ... import tasks
from .batcher import Batcher, TextRejected
from .http import (ApiError, BodyLimitMiddleware, check_header_protocol, error_response, header_timeout_protocol,
                   is_json_content_type)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]


def request_model(s: ServeSettings) -> type[BaseModel]:
    """The request body with this server's limits in its schema (minItems, maxItems, maxLength),
    so a generated client knows them. They are declared, not enforced by pydantic: the handler
    (:func:`check_texts`) refuses with its own documented codes, all 422: a schema violation is a
    validation error; 413 is the body's byte limit only (BodyLimitMiddleware)."""

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[str] = Field(
            description=f"1 to {s.max_texts} texts of at most {s.max_text_chars} characters each; "
                        f"the whole body at most {s.max_body_bytes} bytes",
            json_schema_extra={"minItems": 1, "maxItems": s.max_texts,
                               "items": {"type": "string", "maxLength": s.max_text_chars}})

    return ClassifyRequest


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="what went wrong, for programs: e.g. too_many_texts, overloaded")
    message: str = Field(description="what went wrong and what to do, for people")
    # Present only on the errors they concern (never null): the schema says so, not "integer or null".
    limit: int | SkipJsonSchema[None] = Field(None, description="the limit exceeded (body_too_large, "
                                              "too_many_texts, text_too_long)",
                                              json_schema_extra=_no_default)
    index: int | SkipJsonSchema[None] = Field(None, description="which text of the request (text_too_long, "
                                              "unprocessable_text)", json_schema_extra=_no_default)


class ErrorResponse(BaseModel):
    """Every error the server answers, whatever its status."""
    error: ErrorDetail


# What every operation can answer: the body limit and deadline (BodyLimitMiddleware) come
# before routing, so they apply to a GET with a body too.
COMMON_ERRORS = {408: "the client took too long to send its body (code request_timeout)",
                 413: "the body is over --max-body-bytes (code body_too_large)",
                 500: "internal error, no details (code internal_error)"}
CLASSIFY_ERRORS = {400: "the body is not valid JSON (code invalid_json)",
                   415: "body not sent as application/json (code unsupported_media_type)",
                   422: "the body breaks the schema: wrong types or unknown keys (invalid_request), an empty "
                        "list (empty_texts), more texts than maxItems (too_many_texts) or a text over maxLength "
                        "(text_too_long, with its index; limit says which); or a text the model cannot take "
                        "(unprocessable_text, with its index)",
                   503: "queue full (code overloaded); retry after Retry-After seconds",
                   504: "no answer within the server's --timeout (code timeout)"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                               "schema": {"type": "integer", "minimum": 0}}}


def error_responses(errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, all with the one error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code, text in (COMMON_ERRORS | errors).items():
        out[code] = {"description": text, "model": ErrorResponse}
        if code == 503 and "overloaded" in text:
            out[code]["headers"] = RETRY_AFTER
    return out


class Health(BaseModel):
    status: Literal["ok", "stalled", "stopped"] = Field(description="503 unless ok")
    queued: int = Field(ge=0, description="requests waiting for the model")
    batches: int = Field(ge=0, description="forward passes so far")
    texts: int = Field(ge=0, description="texts classified so far")
    failures: int = Field(ge=0, description="forward passes that raised")
    restarts: int = Field(ge=0, description="times the model worker was restarted")


def response_model(task: tasks.Task, chunked: bool = False) -> type[BaseModel]:
    """``POST /v1/classify``'s answer for a model of ``task``: one prediction per text, its
    decision's fields as the task declares them (``Prediction``; ``MultiLabelPrediction``...)."""
    fields_ = {name: (kind, Field(description=text)) for name, (kind, text) in task.decision_fields().items()}
    fields_.setdefault("scores", (dict[str, float], Field(description="each label's probability")))
    fields_["truncated"] = (bool, Field(description="tokens of the text were not read: it was longer than the "
                                                    "model's max_length tokens (a chunked model's: than its "
                                                    "longest_text)"))
    if chunked:
        fields_["windows"] = (int, Field(ge=1, description="how many windows of max_length tokens the text was "
                                                           "read as (long_text chunk)"))
    fields_["empty"] = (bool, Field(description="the text is empty or only whitespace: the answer is the "
                                                "model's prior"))
    item = create_model(f"{task.schema_name}Prediction", **fields_)  # type: ignore[call-overload]
    return create_model(f"{task.schema_name}ClassifyResponse", results=(list[item], ...))  # type: ignore[valid-type]


class Example(BaseModel):
    label: str
    text: str


def limits_model(s: ServeSettings) -> type[BaseModel]:
    """``/v1/model``'s ``limits``: every ServeSettings field but the CORS origins, each with
    this server's value as its ``const``, so the schema and the answer say the same."""
    hints = get_type_hints(ServeSettings)
    return create_model("Limits", **{  # type: ignore[call-overload]
        f.name: (hints[f.name], Field(description=f.metadata.get("help"),
                                      json_schema_extra={"const": getattr(s, f.name)}))
        for f in fields(ServeSettings) if f.name != "cors_origins"})


def model_info_model(s: ServeSettings) -> type[BaseModel]:
    """The answer of ``GET /v1/model`` (see :func:`model_info`)."""

    class ModelInfo(BaseModel):
        model_config = ConfigDict(extra="allow")  # room for what a run adds; never drops it
        labels: list[str]
        backbone: str | None = Field(description="the base model's name (not its path)")
        architecture: str | None
        max_length: int = Field(ge=1, description="tokens read per model input; longer texts are truncated, "
                                                  "or with long_text chunk read in windows of this many tokens")
        long_text: str = Field(default="truncate", description="how longer texts are read: truncate, head-tail, "
                                                               "chunk")
        longest_text: int | None = Field(default=None, description="chunk: the most tokens of a text read "
                                                                   "(max_windows windows); the rest is dropped")
        pooling: str | None
        backend: str
        precision: str | None
        temperature: float | None = Field(description="scores are softmax(logits / temperature)")
        examples: list[Example]
        metrics: dict[str, Any] = Field(description="the run's test metrics (metrics.json); NaN is null")
        limits: limits_model(s)  # type: ignore[valid-type]

    return ModelInfo


def _task(classifier: Any) -> tasks.Task:
    """The served model's task (a stand-in classifier without one is single-label)."""
    return getattr(classifier, "task", tasks.SINGLE_LABEL)


def _finite(x: Any) -> Any:
    """JSON has no NaN: metrics that are NaN become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _examples(stored: Any, labels: list[str]) -> list[dict[str, str]]:
    """The web page's examples from the run (config.json ``examples``), only well-formed ones."""
    if not isinstance(stored, list):
        return []
    return [{"label": e["label"], "text": e["text"]} for e in stored[:20]
            if isinstance(e, dict) and isinstance(e.get("text"), str) and e.get("label") in labels]


def model_info(classifier: Any) -> dict[str, Any]:
    cfg = getattr(classifier, "config", {}) or {}
    metrics: dict[str, Any] = {}
    directory = getattr(classifier, "directory", None)
    if directory is not None and (Path(directory) / "metrics.json").exists():
        try:
            m = read_json_object(file_inside(Path(directory), "metrics.json"))
            metrics = {k: m[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
                                         "test_micro_f1", "n_train", "n_val", "n_test", "best_epoch") if k in m}
            if isinstance(m.get("calibration"), dict):
                metrics["test_ece"] = m["calibration"].get("test_ece_after")
            rep = m.get("test_report") or {}
            for k in ("per_class", "macro_f1", "roc_auc", "confusion_matrix", "exact_match", "hamming_loss"):
                if k in rep:
                    metrics[f"test_{k}"] = rep[k]
        except GptclfError:
            metrics = {}
    arch = cfg.get("architecture", {})
    base = cfg.get("base_model")
    return _finite({
        "labels": list(classifier.labels),
        # A path would leak the server's file layout: report only its last component.
        "backbone": Path(str(base.get("name", "") if isinstance(base, dict) else base or "")).name or None,
        "architecture": arch.get("arch"),
        "max_length": classifier.max_length,
        "long_text": classifier.long_text.mode if hasattr(classifier, "long_text") else "truncate",
        "longest_text": getattr(classifier, "longest_text", None),
        "pooling": cfg.get("pooling"),
        "backend": getattr(classifier, "backend", "torch"),
        "precision": getattr(classifier, "precision", None),
        "temperature": getattr(classifier, "temperature", 1.0),  # the scores are softmax(logits / T)
        **_task(classifier).info_fields(classifier.labels, getattr(classifier, "thresholds", [])),
        "examples": _examples(cfg.get("examples"), classifier.labels),
        "metrics": metrics,
    })


def create_app(classifier: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The service around ``classifier`` (a :class:`gptclf.inference.classifier.Classifier` or
    anything with ``labels``, ``max_length`` and ``predict_proba(texts, batch_size)``)."""
    from ... import __version__

    s = settings or ServeSettings()
    app = FastAPI(title="gptclf", version=__version__, lifespan=_lifespan(classifier, s),
                  description="Text classification with a fine-tuned decoder LLM.")
    app.state.settings = s
    _add_error_handlers(app)
    _add_routes(app, classifier, s)
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    # Outermost, so an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes, read_timeout=s.client_timeout_s)
    return app


def _lifespan(classifier: Any, s: ServeSettings) -> Any:
    """Start the batcher (the one thread that runs the model) with the app, stop it after."""
    from contextlib import asynccontextmanager

    def run_model(texts: list[str]) -> np.ndarray:
        return classifier.predict_proba(texts, s.batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        batcher = Batcher(run_model, s)
        batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": {"code", "message"}}`` with a documented status, never a stack trace."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if not is_json_content_type(request.headers.get("content-type")):
            # FastAPI then validates the raw bytes and says "should be a valid dictionary",
            # which sends the client looking at its JSON rather than at its headers.
            return error_response(415, "unsupported_media_type",
                                  "send the body as JSON with the header Content-Type: application/json")
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        # Say where and what, but never echo the input back.
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                 for e in errors[:5]]
        return error_response(422, "invalid_request",
                              '; '.join(parts) + ' (expected {"texts": ["...", ...]})')

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and is_json_content_type(request.headers.get("content-type")):
            # FastAPI's body parser says 400 "error parsing the body" for what json.loads raises
            # besides JSONDecodeError (a RecursionError on deep nesting): the body is not JSON we read.
            return error_response(400, "invalid_json", "the request body is not valid JSON (nested too deeply?)")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", "internal server error")


def check_texts(texts: list[str], s: ServeSettings) -> None:
    """The request limits on texts: at least one, at most ``max_texts``, each at most ``max_text_chars``."""
    if not texts:
        raise ApiError(422, "empty_texts", "texts must contain at least one text")
    if len(texts) > s.max_texts:
        raise ApiError(422, "too_many_texts", f"{len(texts)} texts in one request; the limit is "
                       f"{s.max_texts}", limit=s.max_texts)
    for i, t in enumerate(texts):
        if len(t) > s.max_text_chars:
            raise ApiError(422, "text_too_long", f"texts[{i}] has {len(t)} characters; the limit is "
                           f"{s.max_text_chars}", limit=s.max_text_chars, index=i)


async def _probabilities(batcher: Batcher, texts: list[str], s: ServeSettings) -> np.ndarray:
    """Queue the texts for the model and wait for them, within the queue bound and the timeout."""
    try:
        future = batcher.submit(texts)
    except asyncio.QueueFull:
        raise ApiError(503, "overloaded", f"the server has {s.max_queue} requests waiting; retry later",
                       headers={"Retry-After": str(s.retry_after_s)}) from None
    try:
        return await asyncio.wait_for(asyncio.shield(future), s.timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        future.cancel()  # the batcher skips it if it has not started yet
        raise ApiError(504, "timeout", f"no answer within {s.timeout_s:g} s") from None
    except TextRejected as e:  # this request's text alone; the rest of its batch was answered
        raise ApiError(422, "unprocessable_text", f"texts[{e.index}] could not be classified: {e.reason}",
                       index=e.index) from None


def _add_routes(app: FastAPI, classifier: Any, s: ServeSettings) -> None:
    labels = list(classifier.labels)
    task = _task(classifier)  # what one answer holds: {"label", "score", ...}, or {"labels", ...}
    thresholds = getattr(classifier, "thresholds", None)
    info = model_info(classifier)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/healthz", response_model=Health, responses={
        **error_responses({}), 503: {"description": "the model worker is stalled or stopped", "model": Health}})
    async def healthz(request: Request) -> JSONResponse:
        b: Batcher = request.app.state.batcher
        status = b.health()
        return JSONResponse({"status": status, "queued": b.queue.qsize(), "batches": b.batches,
                             "texts": b.texts_done, "failures": b.failures, "restarts": b.restarts},
                            status_code=200 if status == "ok" else 503)

    @app.get("/v1/model", response_model=model_info_model(s), responses=error_responses({}))
    async def model() -> dict[str, Any]:
        limits = {k: v for k, v in asdict(s).items() if k != "cors_origins"}
        return info | {"limits": limits}

    chunked = bool(getattr(getattr(classifier, "long_text", None), "chunked", False))
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        check_texts(body.texts, s)
        probs = await _probabilities(request.app.state.batcher, body.texts, s)
        # Tokenizing again is cheap next to the forward pass, and keeps the batcher's job plain arrays.
        flags = classifier.truncated(body.texts) if hasattr(classifier, "truncated") else [False] * len(probs)
        windows = classifier.windows(body.texts) if chunked else [None] * len(probs)
        return {"results": [task.prediction(labels, p, cut, not t.strip(), thresholds, n)
                            for p, cut, t, n in zip(probs, flags, body.texts, windows)]}

    # The body's model carries this server's limits; set here because annotations are strings.
    classify.__annotations__["body"] = request_model(s)
    # JSON Schema cannot bound a body's bytes: an OpenAPI extension on the body declares it.
    app.post("/v1/classify", response_model=response_model(task, chunked),
             responses=error_responses(CLASSIFY_ERRORS),
             openapi_extra={"requestBody": {"x-max-body-bytes": s.max_body_bytes}})(classify)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "auto", quantize: str | None = None,
          backend: str = "auto", threads: int = 0, log_level: str = "info", access_log: bool = False,
          static_shapes: str = "auto") -> None:
    import socket

    import uvicorn

    from ..classifier import Classifier

    check_header_protocol()  # before the slow model load: never serve without the header deadline
    # Check the address before the (slow) model load, and say what to do instead of a traceback.
    if not 0 <= port <= 65535:
        raise GptclfError(f"--port must be between 0 and 65535, not {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise GptclfError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                              hint="another server may be using the port (pass --port N), or --host is not "
                                   "an address of this machine") from None
        except (TypeError, ValueError, UnicodeError) as e:  # a --host that is no host name at all
            raise GptclfError(f"--host {host!r} is not an address or host name ({e})") from None
    t0 = time.perf_counter()
    clf = Classifier.load(model_dir, device=device, quantize=quantize, backend=backend, threads=threads,
                          static_shapes=static_shapes)
    app = create_app(clf, settings)
    # torch and its imports leave ~10^6 long-lived objects; every full (gen-2) collection
    # walked them all, stalling the event loop and the model for 0.2-0.3 s under load (the
    # p99). Freezing them moves them out of the collector's sight; new garbage is still
    # collected as usual.
    gc.collect()
    gc.freeze()
    print(f"gptclf: loaded {model_dir} ({', '.join(clf.labels)}; {clf.backend} {clf.precision}) in {time.perf_counter() - t0:.1f}s; "
          f"open http://{host}:{port}/", flush=True)
    s = settings or ServeSettings()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                http=header_timeout_protocol(s.client_timeout_s))
