"""HTTP plumbing of ``gptclf serve`` that does not depend on the model: the JSON error body,
the request-body limit and deadline, and the request-header deadline."""

from __future__ import annotations

import asyncio
import time
from email.message import Message
from typing import Any, Callable

from fastapi.responses import JSONResponse


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


# The private uvicorn internals the header deadline builds on. pyproject bounds uvicorn to
# the tested versions; check_header_protocol refuses to serve if a uvicorn installed
# anyway (--no-deps, an old lock file) no longer has them, rather than silently serving
# without the protection.
_H11_METHODS = ("connection_made", "data_received", "on_response_complete", "connection_lost")
_H11_SOURCE_MARKERS = ("self.cycle", "response_complete", "self.transport", "self.loop")


def check_header_protocol() -> None:
    """Raise GptclfError unless uvicorn's H11Protocol still has what the deadline relies on."""
    import inspect

    from ...errors import GptclfError

    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        source = inspect.getsource(H11Protocol)
    except (ImportError, OSError, TypeError) as e:
        missing = [f"uvicorn's h11 protocol ({e})"]
    else:
        missing = [m for m in _H11_METHODS if not callable(H11Protocol.__dict__.get(m))]
        missing += [m for m in _H11_SOURCE_MARKERS if m not in source]
    if missing:
        import uvicorn

        raise GptclfError(f"gptclf serve cannot protect against slow clients with uvicorn "
                          f"{getattr(uvicorn, '__version__', '?')}: its H11Protocol lacks {', '.join(missing)}",
                          hint="install a tested uvicorn: pip install 'gptclf[serve]' (uvicorn>=0.29,<0.55)")


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


