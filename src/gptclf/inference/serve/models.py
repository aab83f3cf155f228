"""The models one ``gptclf serve`` answers for, by name, through one
:class:`gptclf.inference.group.ModelGroup`: which models a request names (one, a list, or ``"*"``),
each text's answer from each of them, and what the schema says a request may name.

Every request's texts go to the batcher as ``(text, model names)`` items, so texts asking for
different models share a forward pass and a trunk's blocks run once for all the models a text
asks for (:meth:`ModelGroup.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import tasks
from ..group import ALL, NAME, ModelGroup
from .http import ApiError
from .settings import ServeSettings

MISSING: Any = object()  # a request that names no model


def as_group(model: Any) -> ModelGroup:
    """A group as given, or one classifier as a group of one named after its directory."""
    if isinstance(model, ModelGroup):
        return model
    name = Path(str(getattr(model, "directory", None) or "model")).name
    return ModelGroup({name if NAME.match(name) else "model": model})


class ServedModels:
    """The served models by name; ``run`` is the batcher's model function."""

    def __init__(self, model: Any, settings: ServeSettings) -> None:
        self.group = as_group(model)
        self.settings = settings
        self.names = self.group.names

    def __getitem__(self, name: str) -> Any:
        return self.group.models[name]

    @property
    def single(self) -> bool:
        return len(self.names) == 1

    def run(self, items: list[tuple[str, frozenset[str]]]) -> list[dict[str, np.ndarray]]:
        return self.group.run(items, self.settings.batch_size)

    def resolve(self, model: Any, default_first: bool = False) -> tuple[list[str], bool]:
        """The names a request's ``model`` asks for, and whether it asked for several (a list or
        ``"*"``: answered per model). Absent: the only model (``default_first``: the first)."""
        if model is MISSING:
            if self.single or default_first:
                return self.names[:1], False
            raise ApiError(422, "model_required", f"this server has {len(self.names)} models: name one "
                           f"(\"model\": {self.names[0]!r}), several, or \"*\" (GET /v1/models lists them)")
        if model == ALL:
            return list(self.names), True
        if isinstance(model, str):
            return [self._known(model)], False
        if isinstance(model, list) and model and all(isinstance(m, str) for m in model):
            return list(dict.fromkeys(self._known(m) for m in model)), True
        raise ApiError(422, "invalid_request", 'model: a model name, a non-empty list of names, or "*"')

    def _known(self, name: str) -> str:
        if name not in self.group.models:
            raise ApiError(404, "unknown_model", f"no model named {name[:80]!r}; this server has "
                           f"{', '.join(self.names)} (GET /v1/models)")
        return name

    def task(self, name: str) -> tasks.Task:
        return getattr(self[name], "task", tasks.SINGLE_LABEL)  # a stand-in without one is single-label

    def chunked(self, name: str) -> bool:
        return bool(getattr(getattr(self[name], "long_text", None), "chunked", False))

    def predictions(self, name: str, texts: Sequence[str], rows: Sequence[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Each text's prediction by model ``name`` (``rows``: the batcher's answers for ``texts``)."""
        clf = self[name]
        # Tokenizing again is cheap next to the forward pass, and keeps the batcher's job plain arrays.
        cut = clf.truncated(texts) if hasattr(clf, "truncated") else [False] * len(texts)
        windows = clf.windows(texts) if self.chunked(name) else [None] * len(texts)
        labels, thresholds, task = list(clf.labels), getattr(clf, "thresholds", None), self.task(name)
        return [task.prediction(labels, r[name], c, not t.strip(), thresholds, n)
                for r, c, t, n in zip(rows, cut, texts, windows)]

    def tokens(self, name: str, texts: Sequence[str]) -> int:
        """Tokens the model reads for ``texts`` (vLLM's ``usage``; 0 for a backend that does not say)."""
        clf = self[name]
        if not hasattr(clf, "encode"):
            return 0
        return sum(len(r) for r in clf.encode(list(texts)))

    def model_schema(self, required: bool) -> dict[str, Any]:
        """``model``'s JSON Schema: one of the names (or ``"*"``), or a non-empty list of names."""
        one = {"type": "string", "enum": [*self.names, ALL]}
        return {"anyOf": [one, {"type": "array", "items": {"type": "string", "enum": list(self.names)},
                                "minItems": 1}],
                "description": "which model answers: a name, a list of names or \"*\" (every model; then the "
                               "answer is per model)" + ("" if required else "; left out: the only model")}
