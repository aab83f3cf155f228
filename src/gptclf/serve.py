"""``gptclf serve``: the classifier behind an HTTP API and a small web page.

Endpoints: ``POST /v1/classify``, ``GET /v1/model``, ``GET /healthz``, ``GET /`` (the
page), ``GET /openapi.json``.

Concurrent requests are batched on the server: the first waiting request opens a short
collection window (``batch_wait_ms``), every request that arrives in it (up to
``max_batch_size`` texts) joins the same forward pass. While the model runs, new
requests queue up and form the next batch, so throughput grows with load. The model
runs in one worker thread, so the event loop keeps answering (health checks, the page,
errors) while it computes.

Failure modes are explicit: a full queue answers 503 with ``Retry-After``, a request
that waits too long 504, limits (body size, texts per request, text length) a 4xx, a
body not sent as JSON 415, a client too slow to send its body 408 (one too slow to send
its headers has its connection closed), all as ``{"error": {"code", "message"}}``; an
unexpected error answers a generic 500 with no stack trace or file path.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from email.message import Message
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .serve_settings import ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from .errors import GptclfError

    raise GptclfError(f"serving needs FastAPI and uvicorn ({e.name} is missing)",
                      hint="pip install 'gptclf[serve]'") from None


# ------------------------------------------------------------------------------ errors


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


def is_json_content_type(value: str | None) -> bool:
    """Whether FastAPI parses a body with this Content-Type as JSON (application/json or
    application/*+json; with no Content-Type it does not)."""
    if not value:
        return False
    m = Message()
    m["content-type"] = value
    sub = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status,
                        headers=headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with a 413 before anything parses them,
    whether the client declared a Content-Length or streams the body chunked; and answer
    408 to a client that takes more than ``read_timeout`` seconds to send its body, so a
    slow or stalled client cannot hold a connection and a request open forever."""

    def __init__(self, app: Any, limit: int, read_timeout: float = 10.0) -> None:
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.read_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                resp = error_response(408, "request_timeout", f"the request body did not arrive within "
                                      f"{self.read_timeout:g} s", headers={"Connection": "close"})
                return await resp(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        resp = error_response(413, "body_too_large", f"request body exceeds {self.limit} bytes",
                              limit=self.limit)
        await resp(scope, receive, send)


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for request headers.

    uvicorn (h11) sets no timer while it waits for a request's headers: a client that
    connects and sends nothing, or a header byte now and then (slowloris), keeps its
    connection forever, and enough of them exhaust the process' file descriptors. Here a
    connection must deliver complete headers within ``seconds`` of opening, or of the
    previous response, or it is closed. Once the application has the request, its body
    deadline is :class:`BodyLimitMiddleware`'s.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_request():  # headers complete: the application has the request
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                self._arm()  # keep-alive: the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


# ---------------------------------------------------------------------------- batching


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Collects queued requests into forward passes run in a single worker thread."""

    def __init__(self, predict_proba: Callable[[list[str]], np.ndarray], settings: ServeSettings) -> None:
        self.predict_proba = predict_proba
        self.settings = settings
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptclf-model")
        self._carry: _Job | None = None
        self._last_jobs = 0        # requests in the previous batch: the load signal for the window
        self._task: asyncio.Task | None = None
        self.batches = 0          # forward passes so far (for /healthz and tests)
        self.texts_done = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, texts: list[str]) -> asyncio.Future:
        """Queue texts; raises ``asyncio.QueueFull`` when the queue is at its bound."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return job.future

    async def _next_batch(self) -> list[_Job]:
        s = self.settings
        first = self._carry or await self.queue.get()
        self._carry = None
        jobs, n = [first], len(first.texts)
        if not s.batching:
            return jobs
        if self.queue.empty() and s.batch_wait_ms > 0 and self._last_jobs > 1:
            # Nobody else waiting yet, but the last batch was shared: under load, hold the
            # window open briefly for concurrent requests. A lone client (last batch of one)
            # never pays the window; under load requests pile up while the model runs anyway.
            await asyncio.sleep(s.batch_wait_ms / 1000)
        while n < s.max_batch_size and not self.queue.empty():
            job = self.queue.get_nowait()
            if n + len(job.texts) > s.max_batch_size:
                self._carry = job  # would overflow the batch: it opens the next one
                break
            jobs.append(job)
            n += len(job.texts)
        self._last_jobs = len(jobs)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [j for j in await self._next_batch() if not j.future.done()]  # drop timed-out ones
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            try:
                probs = await loop.run_in_executor(self.executor, self.predict_proba, texts)
            except Exception as e:  # handed to each request; the 500 handler hides the details
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            self.texts_done += len(texts)
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(probs[i: i + len(j.texts)])
                i += len(j.texts)


# -------------------------------------------------------------------------------- app


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    results: list[Prediction]


def _finite(x: Any) -> Any:
    """JSON has no NaN: metrics that are NaN become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def model_info(classifier: Any) -> dict[str, Any]:
    cfg = getattr(classifier, "config", {}) or {}
    metrics: dict[str, Any] = {}
    directory = getattr(classifier, "directory", None)
    if directory is not None and (Path(directory) / "metrics.json").exists():
        try:
            m = json.loads((Path(directory) / "metrics.json").read_text(encoding="utf-8"))
            metrics = {k: m[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
                                         "n_train", "n_val", "n_test") if k in m}
            rep = m.get("test_report") or {}
            for k in ("per_class", "macro_f1", "roc_auc", "confusion_matrix"):
                if k in rep:
                    metrics[f"test_{k}"] = rep[k]
        except (OSError, json.JSONDecodeError):
            metrics = {}
    arch = cfg.get("architecture", {})
    base = cfg.get("base_model")
    return _finite({
        "labels": list(classifier.labels),
        # A path would leak the server's file layout: report only its last component.
        "backbone": Path(str(base.get("name", "") if isinstance(base, dict) else base or "")).name or None,
        "architecture": arch.get("arch"),
        "max_length": classifier.max_length,
        "pooling": cfg.get("pooling"),
        "metrics": metrics,
    })


def create_app(classifier: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The service around ``classifier`` (a :class:`gptclf.predict.Classifier` or anything
    with ``labels``, ``max_length`` and ``predict_proba(texts, batch_size)``)."""
    from contextlib import asynccontextmanager

    s = settings or ServeSettings()
    labels = list(classifier.labels)
    info = model_info(classifier)
    page = resources.files("gptclf").joinpath("static/index.html").read_text(encoding="utf-8")

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

    from . import __version__

    app = FastAPI(title="gptclf", version=__version__, lifespan=lifespan,
                  description="Text classification with a fine-tuned decoder LLM.")
    app.state.settings = s

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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", "internal server error")

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        b: Batcher = request.app.state.batcher
        return {"status": "ok", "queued": b.queue.qsize(), "batches": b.batches, "texts": b.texts_done}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        limits = {k: v for k, v in asdict(s).items() if k != "cors_origins"}
        return info | {"limits": limits}

    @app.post("/v1/classify", response_model=ClassifyResponse,
              responses={400: {"description": "invalid JSON"}, 413: {"description": "over a size limit"},
                         415: {"description": "body not sent as application/json"},
                         422: {"description": "wrong types or empty list"},
                         503: {"description": "queue full; retry after Retry-After seconds"},
                         504: {"description": "timed out"}})
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        texts = body.texts
        if not texts:
            raise ApiError(422, "empty_texts", "texts must contain at least one text")
        if len(texts) > s.max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts in one request; the limit is "
                           f"{s.max_texts}", limit=s.max_texts)
        for i, t in enumerate(texts):
            if len(t) > s.max_text_chars:
                raise ApiError(413, "text_too_long", f"texts[{i}] has {len(t)} characters; the limit is "
                               f"{s.max_text_chars}", limit=s.max_text_chars, index=i)
        batcher: Batcher = request.app.state.batcher
        try:
            future = batcher.submit(texts)
        except asyncio.QueueFull:
            raise ApiError(503, "overloaded", f"the server has {s.max_queue} requests waiting; retry later",
                           headers={"Retry-After": str(s.retry_after_s)}) from None
        try:
            probs = await asyncio.wait_for(asyncio.shield(future), s.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()  # the batcher skips it if it has not started yet
            raise ApiError(504, "timeout", f"no answer within {s.timeout_s:g} s") from None
        results = []
        for p in probs:
            k = int(p.argmax())
            results.append({"label": labels[k], "score": float(p[k]),
                            "scores": {lab: float(v) for lab, v in zip(labels, p)}})
        return {"results": results}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    # Outermost, so an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes, read_timeout=s.client_timeout_s)
    return app


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "auto", quantize: str | None = None,
          log_level: str = "info", access_log: bool = False) -> None:
    import uvicorn

    from .predict import Classifier

    import socket

    from .errors import GptclfError

    # Check the address before the (slow) model load, and say what to do instead of a traceback.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise GptclfError(f"cannot listen on {host}:{port} ({e.strerror})",
                              hint="another server may be using the port: pass --port N") from None
    t0 = time.perf_counter()
    clf = Classifier.load(model_dir, device=device, quantize=quantize)
    app = create_app(clf, settings)
    # torch and its imports leave ~10^6 long-lived objects; every full (gen-2) collection
    # walked them all, stalling the event loop and the model for 0.2-0.3 s under load (the
    # p99). Freezing them moves them out of the collector's sight; new garbage is still
    # collected as usual.
    gc.collect()
    gc.freeze()
    print(f"gptclf: loaded {model_dir} ({', '.join(clf.labels)}) in {time.perf_counter() - t0:.1f}s; "
          f"open http://{host}:{port}/", flush=True)
    s = settings or ServeSettings()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                http=header_timeout_protocol(s.client_timeout_s))
