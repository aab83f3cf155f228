"""The kinds of target gptclf trains (:class:`~gptclf.tasks.base.Task`), one file each.

``TASKS`` lists them by name (``--task``, config.json ``task``); a new kind is its file and
one entry here. Everything else asks :func:`get` (or :func:`task_of_config` for a run
directory) and never branches on the kind itself.
"""

from __future__ import annotations

from typing import Any

from ..errors import GptclfError
from .base import Tally, Task
from .multi_label import MULTI_LABEL
from .single_label import SINGLE_LABEL

__all__ = ["TASKS", "DEFAULT_TASK", "MULTI_LABEL", "SINGLE_LABEL", "Tally", "Task", "get", "task_of_config"]

TASKS: dict[str, Task] = {t.name: t for t in (SINGLE_LABEL, MULTI_LABEL)}
DEFAULT_TASK = SINGLE_LABEL.name


def get(name: str | None) -> Task:
    """The task called ``name`` (None: the chapter's single-label task)."""
    task = TASKS.get(name or DEFAULT_TASK)
    if task is None:
        raise GptclfError(f"unknown task {name!r}", hint=f"use one of {', '.join(TASKS)}")
    return task


def task_of_config(d: dict[str, Any], labels: list[str], where: str) -> str:
    """The task a config.json describes (its ``task``, else an earlier spelling), every task's own
    keys checked first."""
    for task in TASKS.values():
        task.check_config(d, labels, where)
    name = d.get("task")
    if name is None:
        name = next((t.name for t in TASKS.values() if t.in_config(d)), DEFAULT_TASK)
    if not isinstance(name, str) or name not in TASKS:
        raise GptclfError(f"{where}: task {name!r} is not one of {list(TASKS)}",
                          hint="the run directory comes from a newer gptclf, or is damaged")
    return name
