"""What every classify endpoint of ``gptclf serve`` shares (ours, vLLM's, TEI's): the one error
body and the errors each operation declares, the request limits on texts, and queueing a
request's texts for the model within the queue bound and the timeout."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from .batcher import Batcher, TextRejected
from .http import ApiError
from .settings import ServeSettings


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


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
                        "(unprocessable_text, with its index); or no model named where the server has several "
                        "(model_required)",
                   404: "no model of that name is served (code unknown_model): see GET /v1/models",
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


def check_texts(texts: list[str], s: ServeSettings, field: str = "texts") -> None:
    """The request limits on texts: at least one, at most ``max_texts``, each at most ``max_text_chars``
    (``field``: what the request calls them: texts, vLLM's input, TEI's inputs)."""
    if not texts:
        raise ApiError(422, "empty_texts", f"{field} must contain at least one text")
    if len(texts) > s.max_texts:
        raise ApiError(422, "too_many_texts", f"{len(texts)} texts in one request; the limit is "
                       f"{s.max_texts}", limit=s.max_texts)
    for i, t in enumerate(texts):
        if len(t) > s.max_text_chars:
            raise ApiError(422, "text_too_long", f"{field}[{i}] has {len(t)} characters; the limit is "
                           f"{s.max_text_chars}", limit=s.max_text_chars, index=i)


async def queue_and_wait(batcher: Batcher, texts: list[Any], s: ServeSettings) -> Sequence[Any]:
    """Queue one request's items for the model and wait for their answers, within the queue bound
    and the timeout."""
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


