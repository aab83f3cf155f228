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

import gc
import math
import time
from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_type_hints


from ...errors import GptclfError
from ...files import file_inside, read_json_object
from .settings import ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, create_model
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise GptclfError(f"serving needs FastAPI and uvicorn ({e.name} is missing)",
                      hint="pip install 'gptclf[serve]'") from None

from ... import tasks
from . import compat
from .batcher import Batcher
from .common import CLASSIFY_ERRORS, ErrorResponse, check_texts, error_responses, queue_and_wait  # noqa: F401
from .http import (ApiError, BodyLimitMiddleware, check_header_protocol, error_response, header_timeout_protocol,
                   is_json_content_type)
from .metrics import MetricsMiddleware, ServeMetrics
from .models import MISSING, ServedModels
from .schema import request_model, response_models


class Health(BaseModel):
    status: Literal["ok", "stalled", "stopped"] = Field(description="503 unless ok")
    queued: int = Field(ge=0, description="requests waiting for the model")
    batches: int = Field(ge=0, description="forward passes so far")
    texts: int = Field(ge=0, description="texts classified so far")
    failures: int = Field(ge=0, description="forward passes that raised")
    restarts: int = Field(ge=0, description="times the model worker was restarted")


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
    """The service around ``classifier``: a :class:`gptclf.inference.group.ModelGroup` (every model
    by name), a :class:`gptclf.inference.classifier.Classifier`, or anything with ``labels``,
    ``max_length`` and ``predict_proba(texts, batch_size)`` (one model, named after its directory)."""
    from ... import __version__

    s = settings or ServeSettings()
    served = ServedModels(classifier, s)
    metrics = ServeMetrics(s, served.group.load_seconds, KNOWN_PATHS)
    app = FastAPI(title="gptclf", version=__version__, lifespan=_lifespan(served, s, metrics),
                  description="Text classification with fine-tuned decoder LLMs.")
    app.state.settings, app.state.served, app.state.metrics = s, served, metrics
    _add_error_handlers(app)
    _add_routes(app, served, s)
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    # Outermost, so an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes, read_timeout=s.client_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outside even that: a 413 is counted too
    return app


KNOWN_PATHS = ("/", "/healthz", "/metrics", "/openapi.json", "/v1/model", "/v1/models", "/v1/classify",
               "/classify", "/predict", "/docs", "/redoc")


def _lifespan(served: ServedModels, s: ServeSettings, metrics: ServeMetrics) -> Any:
    """Start the batcher (the one thread that runs the models) with the app, stop it after."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        batcher = Batcher(served.run, s)
        batcher.on_batch = metrics.on_batch
        metrics.watch_queue(batcher.queue.qsize)
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


def _add_routes(app: FastAPI, served: ServedModels, s: ServeSettings) -> None:
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    limits = {k: v for k, v in asdict(s).items() if k != "cors_origins"}
    infos = {n: model_info(served[n]) | {"limits": limits} for n in served.names}
    info_model = model_info_model(s)

    @app.get("/healthz", response_model=Health, responses={
        **error_responses({}), 503: {"description": "the model worker is stalled or stopped", "model": Health}})
    async def healthz(request: Request) -> JSONResponse:
        b: Batcher = request.app.state.batcher
        status = b.health()
        return JSONResponse({"status": status, "queued": b.queue.qsize(), "batches": b.batches,
                             "texts": b.texts_done, "failures": b.failures, "restarts": b.restarts},
                            status_code=200 if status == "ok" else 503)

    @app.get("/v1/model", response_model=info_model, responses=error_responses({}),
             description="the model (with several: the first --model; GET /v1/models lists them all)")
    async def model() -> dict[str, Any]:
        return infos[served.names[0]]

    @app.get("/v1/models", response_model=models_list_model(info_model), responses=error_responses({}))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry(n, served[n], infos[n]) for n in served.names]}

    _add_classify(app, served, s)

    # Its errors are JSON still: stated per response, since a model there would take text/plain.
    json_errors = {code: {"description": r["description"], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for code, r in error_responses({}).items()}

    @app.get("/metrics", response_class=PlainTextResponse, responses=json_errors,
             description="Prometheus metrics (text format)")
    async def metrics(request: Request) -> Response:
        body, kind = request.app.state.metrics.text()
        return Response(body, media_type=kind)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


def _add_classify(app: FastAPI, served: ServedModels, s: ServeSettings) -> None:
    """``POST /v1/classify`` (ours, or vLLM's when the body has ``input``) and the other servers'
    endpoints (compat.py)."""
    ours, vllm = request_model(s, served), compat.add_routes(app, served, s)
    one, several = response_models(served)

    async def classify(body: Any, request: Request) -> JSONResponse:
        if isinstance(body, vllm):
            return await compat.vllm_answer(body, request, served)
        names, per_model = served.resolve(body.model if "model" in body.model_fields_set else MISSING)
        request.state.models = names  # for the metrics, whatever the answer
        check_texts(body.texts, s)
        wanted = frozenset(names)
        rows = await queue_and_wait(request.app.state.batcher, [(t, wanted) for t in body.texts], s)
        results = {n: served.predictions(n, body.texts, rows) for n in names}
        for n, r in results.items():
            request.app.state.metrics.truncated.labels(n).inc(sum(x["truncated"] for x in r))
        if per_model:
            return JSONResponse({"models": {n: {"results": r} for n, r in results.items()}})
        return JSONResponse({"model": names[0], "results": results[names[0]]})

    # The body's models carry this server's limits and names; set here because annotations are strings.
    classify.__annotations__["body"] = Union[ours, vllm]
    # JSON Schema cannot bound a body's bytes: an OpenAPI extension on the body declares it.
    app.post("/v1/classify", response_model=Union[one, several, compat.VllmClassificationResponse],
             responses=error_responses(CLASSIFY_ERRORS),
             openapi_extra={"requestBody": {"x-max-body-bytes": s.max_body_bytes}})(classify)


def model_entry(name: str, classifier: Any, info: dict[str, Any]) -> dict[str, Any]:
    """One model of ``GET /v1/models``: an OpenAI/vLLM model entry (``id``, ``object``) with our info."""
    base = (getattr(classifier, "config", None) or {}).get("base_weights")
    fingerprint = base.get("fingerprint") if isinstance(base, dict) else None
    sha = fingerprint.get("sha256") if isinstance(fingerprint, dict) else None
    return {"id": name, "object": "model", "owned_by": "gptclf",
            "base_fingerprint": sha if isinstance(sha, str) else None, **info}


def models_list_model(info_model: type[BaseModel]) -> type[BaseModel]:
    entry = create_model("ModelEntry", __base__=info_model,  # type: ignore[call-overload]
                         id=(str, Field(description="the model's name: what a request's model says")),
                         object=(Literal["model"], ...), owned_by=(str, ...),
                         base_fingerprint=(str | None, Field(description="sha256 of the base weights the run "
                                                             "was trained on (null: a self-contained run)")))
    return create_model("ModelList", object=(Literal["list"], ...), data=(list[entry], ...))  # type: ignore[call-overload]


def serve(models: str | Path | list[str], host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "auto", quantize: str | None = None,
          backend: str = "auto", threads: int = 0, log_level: str = "info", access_log: bool = False,
          static_shapes: str = "auto") -> None:
    """Serve ``models`` (one run directory, or ``--model`` specs: ``NAME=RUN`` or ``RUN``) until stopped."""
    import uvicorn

    from ..group import ModelGroup, parse_model_specs

    check_header_protocol()  # before the slow model load: never serve without the header deadline
    _check_address(host, port)
    specs = parse_model_specs([str(models)] if isinstance(models, (str, Path)) else list(models))
    t0 = time.perf_counter()
    group = ModelGroup.load(specs, device=device, quantize=quantize, backend=backend, threads=threads,
                            static_shapes=static_shapes)
    app = create_app(group, settings)
    # torch and its imports leave ~10^6 long-lived objects; every full (gen-2) collection
    # walked them all, stalling the event loop and the model for 0.2-0.3 s under load (the
    # p99). Freezing them moves them out of the collector's sight; new garbage is still
    # collected as usual.
    gc.collect()
    gc.freeze()
    for name, directory in specs:
        clf = group.models[name]
        print(f"gptclf: loaded {name} = {directory} ({', '.join(clf.labels)}; {clf.backend} {clf.precision}) "
              f"in {group.load_seconds[name]:.1f}s", flush=True)
    shared = [t for t in group.trunks if len(t.names) > 1]
    print(f"gptclf: {len(specs)} model(s), {group.bases} base copy(ies), "
          + "".join(f"{'+'.join(t.names)} share {t.depth} blocks; " for t in shared)
          + f"{time.perf_counter() - t0:.1f}s; open http://{host}:{port}/", flush=True)
    s = settings or ServeSettings()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                http=header_timeout_protocol(s.client_timeout_s))


def _check_address(host: str, port: int) -> None:
    """Check the address before the (slow) model load, and say what to do instead of a traceback."""
    import socket

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
