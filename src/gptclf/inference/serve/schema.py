"""The request and answer bodies of ``POST /v1/classify`` for the models one server holds, with this
server's limits and model names in their JSON Schema (so a generated client, and schemathesis,
know them). The limits and names are declared, not enforced by pydantic: the handler refuses
with its own documented codes (422 for a schema violation, 404 for a model name it does not
serve; 413 is the body's byte limit only, BodyLimitMiddleware)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ... import tasks
from .models import ServedModels
from .settings import ServeSettings


def replace_schema(schema: dict[str, Any]) -> Any:
    """A ``json_schema_extra`` that puts ``schema`` in place of what pydantic wrote for the field."""
    def replace(s: dict[str, Any]) -> None:
        s.clear()
        s.update(schema)
    return replace


def texts_field(s: ServeSettings, what: str = "texts") -> Any:
    return Field(description=f"1 to {s.max_texts} {what} of at most {s.max_text_chars} characters each; "
                             f"the whole body at most {s.max_body_bytes} bytes",
                 json_schema_extra={"minItems": 1, "maxItems": s.max_texts,
                                    "items": {"type": "string", "maxLength": s.max_text_chars}})


def model_field(served: ServedModels) -> tuple[Any, Any]:
    """``model``: any value to pydantic (the handler says what is wrong with it: 404 for a name not
    served, 422 ``model_required`` when it is left out and several models are served)."""
    return Any, Field(None, json_schema_extra=replace_schema(served.model_schema(not served.single)))


def body_config(served: ServedModels, model_required: bool) -> ConfigDict:
    """No unknown keys; ``model`` required in the schema when ``model_required`` (several models:
    which would it be?), though checked by the handler, so that its answer says what to do."""
    def require(schema: dict[str, Any]) -> None:
        schema["required"] = [*schema.get("required", []), "model"]
    return ConfigDict(extra="forbid", json_schema_extra=require if model_required else None)


def request_model(s: ServeSettings, served: ServedModels) -> type[BaseModel]:
    """Our request: ``{"model"?, "texts"}``."""
    return create_model("ClassifyRequest", __config__=body_config(served, not served.single),  # type: ignore[call-overload]
                        model=model_field(served), texts=(list[str], texts_field(s)))


def prediction_model(task: tasks.Task, chunked: bool = False) -> type[BaseModel]:
    """One text's prediction by a model of ``task``: its decision's fields as the task declares
    them (``Prediction``; ``MultiLabelPrediction``...)."""
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
    name = f"{task.schema_name}{'Windowed' if chunked else ''}Prediction"
    return create_model(name, **fields_)  # type: ignore[call-overload]


def response_models(served: ServedModels) -> tuple[type[BaseModel], type[BaseModel]]:
    """The answer for one model (``{"model", "results"}``) and for several (``{"models": {name:
    {"results"}}}``), their predictions of every kind the served models give."""
    kinds: dict[str, tuple[tasks.Task, bool]] = {}
    for n in served.names:
        task, chunked = served.task(n), served.chunked(n)
        kinds.setdefault(f"{task.schema_name}{chunked}", (task, chunked))
    items = [prediction_model(t, c) for t, c in kinds.values()]
    item: Any = items[0] if len(items) == 1 else Union[tuple(items)]
    prefix = next(iter(kinds.values()))[0].schema_name if len(items) == 1 else ""
    results = (list[item], Field(description="one prediction per text, in order"))
    one = create_model(f"{prefix}ClassifyResponse", results=results,  # type: ignore[call-overload]
                       model=(str, Field(description="the model that answered")))
    per_model = create_model("ModelResults", results=results)  # type: ignore[call-overload]
    several = create_model("MultiModelClassifyResponse",  # type: ignore[call-overload]
                           models=(dict[str, per_model], Field(description="each named model's predictions")))
    return one, several
