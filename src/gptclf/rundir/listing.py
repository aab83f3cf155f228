"""``gptclf runs``: one line per run directory under ``runs/``, read from its config.json and
metrics.json, so a user finds the run they want without opening JSON.

A directory that is not a finished run still gets its line, saying what it is: an unfinished
run's checkpoints (``X.partial/``, with the command that resumes it), an interrupted save, a
directory whose config.json is missing or unreadable. Hidden entries (the temporaries of an
atomic save) and folders with no run file at all (``tensorboard/``) are left out; nothing
here raises on a damaged directory.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import GptclfError
from ..files import read_json_object
from .save import directory_bytes
from .weights import human_bytes

# What makes a folder a run (finished, interrupted or damaged) rather than something else.
RUN_FILES = ("config.json", "metrics.json", "model.safetensors", "run.json", "checkpoint.json")
COLUMNS = (("run", "run"), ("date", "date"), ("base", "base"), ("data", "data"), ("labels", "labels"),
           ("test_accuracy", "test acc"), ("size", "size"), ("kept_epoch", "kept epoch"), ("status", "status"))


@dataclass
class RunRow:
    run: str
    date: str = ""
    base: str = ""
    data: str = ""
    labels: str = ""
    test_accuracy: str = ""
    size: str = ""
    kept_epoch: str = ""
    status: str = "ok"


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object file, or None and why not."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return read_json_object(path), None
    except (GptclfError, OSError):
        return None, f"{path.name} unreadable"


def _short(name: Any) -> str:
    """A base model or data source as a person reads it: a path's last part, a hub id
    (``org/name``) whole."""
    text = str(name or "")
    if text.startswith(("/", "~", ".")) or text.count("/") > 1 or "\\" in text:
        text = Path(text).name
    return text if len(text) <= 40 else "..." + text[-37:]


def _labels(labels: Any) -> str:
    if not isinstance(labels, list):
        return ""
    text = ",".join(str(x) for x in labels)
    return text if len(text) <= 30 else f"{len(labels)} labels"


def _kept_epoch(metrics: dict[str, Any], train: dict[str, Any]) -> str:
    epochs = train.get("epochs")
    of = f"/{epochs}" if isinstance(epochs, int) else ""
    best = metrics.get("best_epoch")
    if isinstance(best, int):
        return f"{best}{of}"
    return f"last{of}" if of else ""


def describe_run(path: Path) -> RunRow:
    """One run directory's line; what cannot be read is said in ``status``, never raised."""
    saved = path / "config.json" if (path / "config.json").is_file() else path  # when it was saved
    row = RunRow(path.name, date=time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.stat().st_mtime)))
    if path.name.endswith(".partial"):
        row.status = f"unfinished: gptclf train --resume {path.with_name(path.name[: -len('.partial')])}"
        return row
    try:
        row.size = human_bytes(directory_bytes(path))
    except OSError:
        pass
    config, why = _read(path / "config.json")
    metrics, why_metrics = _read(path / "metrics.json")
    problems = [w for w in (why, why_metrics) if w]
    config, metrics = config or {}, metrics or {}
    base = config.get("base_model")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    row.base = _short(base.get("name") if isinstance(base, dict) else base or train.get("model"))
    row.data = _short(data.get("source") or train.get("data"))
    row.labels = _labels(config.get("labels"))
    acc = metrics.get("test_accuracy")
    row.test_accuracy = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) and not isinstance(acc, bool) else ""
    row.kept_epoch = _kept_epoch(metrics, train)
    if metrics.get("interrupted") is True:
        problems.append("interrupted")
    if problems:
        row.status = "; ".join(problems)
    return row


def list_runs(root: str | Path = "runs") -> list[RunRow]:
    """The runs under ``root`` (or ``root`` itself, when it is one run), oldest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GptclfError(f"{root}: no such directory", hint="train a run first (gptclf train), or pass the "
                                                             "directory that holds your runs: gptclf runs DIR")
    if any((root / f).is_file() for f in RUN_FILES):
        return [describe_run(root)]
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            and any((p / f).exists() for f in RUN_FILES)]
    rows = [describe_run(p) for p in dirs]
    latest = root / "latest"
    if latest.is_symlink():
        for row in rows:
            if (root / row.run).resolve() == latest.resolve():
                row.run += " (latest)"
    return sorted(rows, key=lambda r: (r.date, r.run))


def format_runs(rows: list[RunRow]) -> str:
    """An aligned plain-text table, one run a line, empty columns left out."""
    keys = [(k, title) for k, title in COLUMNS if any(getattr(r, k) for r in rows)]
    table = [[title for _, title in keys]] + [[getattr(r, k) for k, _ in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def runs_json(rows: list[RunRow]) -> list[dict[str, str]]:
    return [asdict(r) for r in rows]
