"""``GET /metrics``: the server's Prometheus metrics, written by ``prometheus-client``.

Each app has its own registry (two apps in one process, as in tests, count apart):
``gptclf_requests_total{endpoint, model, status}``, ``gptclf_request_seconds{endpoint}`` (a
histogram), ``gptclf_batch_texts`` and ``gptclf_batch_seconds`` (each forward pass: texts and
time), ``gptclf_queue_depth``, ``gptclf_texts_truncated_total{model}``,
``gptclf_model_load_seconds{model}``, and the process's own (``process_resident_memory_bytes``,
CPU seconds, open files) from prometheus-client's process collector.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from .settings import ServeSettings

try:
    from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                                   ProcessCollector, generate_latest)
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from ...errors import GptclfError

    raise GptclfError(f"serving needs prometheus-client ({e.name} is missing)",
                      hint="pip install 'gptclf[serve]'") from None

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _size_buckets(most: int) -> tuple[float, ...]:
    """Powers of two up to the largest batch the server forms."""
    out, b = [], 1
    while b < most:
        out.append(float(b))
        b *= 2
    return (*out, float(most))


class ServeMetrics:
    """The metrics of one app, and the ASGI middleware that counts its requests."""

    def __init__(self, settings: ServeSettings, load_seconds: dict[str, float], known_paths: Iterable[str]) -> None:
        self.registry = r = CollectorRegistry()
        self.known = set(known_paths)
        self.requests = Counter("gptclf_requests", "HTTP requests answered", ["endpoint", "model", "status"],
                                registry=r)
        self.latency = Histogram("gptclf_request_seconds", "time from the request to its answer", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("gptclf_batch_texts", "texts per forward pass", registry=r,
                                     buckets=_size_buckets(settings.max_batch_size))
        self.batch_seconds = Histogram("gptclf_batch_seconds", "time of one forward pass", registry=r,
                                       buckets=LATENCY_BUCKETS)
        self.queue = Gauge("gptclf_queue_depth", "requests waiting for the model", registry=r)
        self.truncated = Counter("gptclf_texts_truncated", "texts longer than the model reads", ["model"],
                                 registry=r)
        load = Gauge("gptclf_model_load_seconds", "time to load each model at start", ["model"], registry=r)
        for name, seconds in load_seconds.items():
            load.labels(name).set(seconds)
        ProcessCollector(registry=r)  # process_resident_memory_bytes and friends (Linux)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue.set_function(depth)

    def on_batch(self, texts: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_seconds.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        """Counts every answered request by endpoint (a route's path; ``other`` for any other path, so
        a scan of random paths adds no series), model (what the handler set in ``request.state.models``)
        and status, and times it."""
        async def counted(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            status, t0 = [500], time.perf_counter()

            async def send_status(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                endpoint = scope["path"] if scope["path"] in self.known else "other"
                models = (scope.get("state") or {}).get("models") or [""]
                for m in models:
                    self.requests.labels(endpoint, m, str(status[0])).inc()
                self.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return counted


class MetricsMiddleware:
    """:meth:`ServeMetrics.middleware` as Starlette's ``add_middleware`` takes it."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = metrics.middleware(app)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.app(scope, receive, send)
