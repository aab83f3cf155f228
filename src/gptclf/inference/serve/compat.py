"""The classification endpoints other servers' clients already speak, on the same batcher, limits,
error body and per-request isolation as ``POST /v1/classify``:

- vLLM's classification API: ``POST /classify`` (and ``/v1/classify`` when the body has ``input``):
  ``{"model", "input": str | [str]}`` -> ``{"id", "object": "list", "created", "model", "data":
  [{"index", "label", "probs", "num_classes"}], "usage": {"prompt_tokens", "total_tokens",
  "completion_tokens", "prompt_tokens_details"}}`` (vLLM's ``ClassificationResponse``).
- Hugging Face text-embeddings-inference's ``POST /predict``: ``{"inputs": str | [str],
  "raw_scores": bool, "truncate": bool}`` -> ``[{"label", "score"}, ...]`` for one text, best score
  first (a list of those for a list of texts). TEI serves one model: ``/predict`` answers the first
  ``--model`` unless the body names another (``"model"``, our extension). ``raw_scores`` gives the
  scores before softmax as log-probabilities (the logits less a per-text constant; a multi-label
  model's: its logits over the temperature). Texts longer than the model's input are truncated
  whatever ``truncate`` says (TEI refuses them when it is false); pairs of texts are not taken.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictStr, create_model

from .common import CLASSIFY_ERRORS, check_texts, error_responses, queue_and_wait
from .http import ApiError
from .models import MISSING, ServedModels
from .schema import body_config, replace_schema
from .settings import ServeSettings


def _inputs_schema(s: ServeSettings, what: str) -> dict[str, Any]:
    text = {"type": "string", "maxLength": s.max_text_chars}
    return {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": s.max_texts}],
            "description": f"one text, or 1 to {s.max_texts} {what}, of at most {s.max_text_chars} characters "
                           f"each; the whole body at most {s.max_body_bytes} bytes"}


def _one_model(served: ServedModels, note: str) -> tuple[Any, Any]:
    schema = {"type": "string", "enum": list(served.names), "description": note}
    return Any, Field(None, json_schema_extra=replace_schema(schema))


def vllm_request(s: ServeSettings, served: ServedModels) -> type[BaseModel]:
    return create_model(  # type: ignore[call-overload]
        "VllmClassificationRequest", __config__=body_config(served, not served.single),
        model=_one_model(served, "the model that answers (left out: the only model)"),
        input=(Union[str, list[str]], Field(json_schema_extra=replace_schema(_inputs_schema(s, "texts")))),
        # A string or left out, never null: what the schema says is what is taken.
        user=(StrictStr, Field("", json_schema_extra=replace_schema({"type": "string",
                                                                     "description": "ignored (vLLM's end-user id)"}))))


def tei_request(s: ServeSettings, served: ServedModels) -> type[BaseModel]:
    never_null = {"type": "boolean", "default": False}
    return create_model(  # type: ignore[call-overload]
        "TeiPredictRequest", __config__=body_config(served, False),
        inputs=(Union[str, list[str]], Field(json_schema_extra=replace_schema(_inputs_schema(s, "texts")))),
        raw_scores=(StrictBool, Field(False, description="scores before softmax (log-probabilities)",
                                      json_schema_extra=replace_schema(never_null))),
        truncate=(StrictBool, Field(False, description="accepted; longer texts are always truncated",
                                    json_schema_extra=replace_schema(never_null))),
        model=_one_model(served, f"gptclf's extension: the model that answers (left out: "
                                        f"{served.names[0]!r}, the first)"))


class VllmUsage(BaseModel):
    prompt_tokens: int = Field(ge=0, description="tokens the model read")
    total_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    prompt_tokens_details: None = None


class VllmClassification(BaseModel):
    index: int = Field(ge=0)
    label: str = Field(description="the label with the highest probability")
    probs: list[float] = Field(description="each label's probability, in the model's label order")
    num_classes: int = Field(ge=1)


class VllmClassificationResponse(BaseModel):
    id: str
    object: str = Field(description='always "list"')
    created: int = Field(description="Unix time of the answer")
    model: str
    data: list[VllmClassification]
    usage: VllmUsage


class TeiPrediction(BaseModel):
    label: str
    score: float


TeiPredictResponse = Union[list[TeiPrediction], list[list[TeiPrediction]]]


def _one(served: ServedModels, model: Any, default_first: bool = False) -> str:
    names, several = served.resolve(model, default_first)
    if several:
        raise ApiError(422, "invalid_request", "model: this endpoint answers for one model; name one")
    return names[0]


async def _rows(request: Request, served: ServedModels, name: str, texts: list[str], field: str) -> Any:
    s: ServeSettings = request.app.state.settings
    request.state.models = [name]  # for the metrics, whatever the answer
    check_texts(texts, s, field)
    return await queue_and_wait(request.app.state.batcher, [(t, frozenset([name])) for t in texts], s)


async def vllm_answer(body: BaseModel, request: Request, served: ServedModels) -> JSONResponse:
    """vLLM's ClassificationResponse for ``body`` (a :func:`vllm_request`)."""
    name = _one(served, body.model if "model" in body.model_fields_set else MISSING)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    rows = await _rows(request, served, name, texts, "input")
    labels = list(served[name].labels)
    data = [{"index": i, "label": labels[int(np.argmax(r[name]))], "probs": [float(x) for x in r[name]],
             "num_classes": len(labels)} for i, r in enumerate(rows)]
    tokens = served.tokens(name, texts)
    return JSONResponse({"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                         "model": name, "data": data,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                   "prompt_tokens_details": None}})


def tei_scores(p: np.ndarray, labels: list[str], raw: bool, multi_label: bool) -> list[dict[str, Any]]:
    """One text's ``[{"label", "score"}]``, best first (TEI's order)."""
    if raw:  # clipped: log 0 is no JSON number
        q = np.clip(p.astype(np.float64), 1e-300, 1.0)
        p = np.log(q) - (np.log(np.clip(1.0 - q, 1e-300, 1.0)) if multi_label else 0.0)
    order = sorted(range(len(labels)), key=lambda i: -float(p[i]))
    return [{"label": labels[i], "score": float(p[i])} for i in order]


def add_routes(app: FastAPI, served: ServedModels, s: ServeSettings) -> type[BaseModel]:
    """``POST /classify`` and ``POST /predict``; returns the vLLM request model (``/v1/classify``
    takes it too)."""
    vllm_body, tei_body = vllm_request(s, served), tei_request(s, served)
    errors = error_responses(CLASSIFY_ERRORS)
    extra = {"requestBody": {"x-max-body-bytes": s.max_body_bytes}}

    async def classify(body: Any, request: Request) -> JSONResponse:
        return await vllm_answer(body, request, served)

    async def predict(body: Any, request: Request) -> JSONResponse:
        name = _one(served, body.model if "model" in body.model_fields_set else MISSING, default_first=True)
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        rows = await _rows(request, served, name, texts, "inputs")
        labels, multi = list(served[name].labels), served.task(name).name == "multi-label"
        out = [tei_scores(r[name], labels, body.raw_scores, multi) for r in rows]
        return JSONResponse(out[0] if isinstance(body.inputs, str) else out)

    classify.__annotations__["body"] = vllm_body
    predict.__annotations__["body"] = tei_body
    app.post("/classify", response_model=VllmClassificationResponse, responses=errors, openapi_extra=extra,
             summary="vLLM's classification API")(classify)
    app.post("/predict", response_model=TeiPredictResponse, responses=errors, openapi_extra=extra,
             summary="Hugging Face text-embeddings-inference's predict")(predict)
    return vllm_body
