"""Checkpoints of a run in progress, and resuming from them.

While ``gptclf train --out runs/X`` trains, its state lives next to the future run
directory, in ``runs/X.partial/``::

    runs/X.partial/
      run.json                     the options the run was started with, world size, data fingerprint
      checkpoint.json              step, epoch, next batch, history, early-stopping state,
                                   optimizer structure; names the tensor file below
      checkpoint-000123.safetensors  trainable weights, optimizer tensors, RNG states (and the best weights)

Only the *trainable* parameters are saved: the frozen ones come from the base model,
which the resumed run loads again. ``checkpoint.json`` is the commit point: the tensor
file is written and fsynced first under its own name, then ``checkpoint.json`` is
replaced atomically, then older tensor files are removed; a kill at any moment leaves
a consistent checkpoint. When the run finishes, ``runs/X`` is written (see
:mod:`gptclf.runs`) and ``runs/X.partial`` removed. Nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import GptclfError
from ..files import atomic_path, fsync_path, read_json_object, write_json_atomic

CHECKPOINT_FORMAT = "gptclf-checkpoint/1"
RUN_FILE = "run.json"
STATE_FILE = "checkpoint.json"


def partial_dir(out: Path) -> Path:
    """Where the checkpoints of the run that will be saved to ``out`` live."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def discard_partial(partial: Path, is_main: bool = True) -> None:
    """``--overwrite``: delete a failed or interrupted run's checkpoints, but only a folder
    that is one (a run.json inside, or empty), never a link or the user's own folder."""
    looks_ours = partial.is_dir() and not partial.is_symlink() and \
        ((partial / RUN_FILE).is_file() or not any(partial.iterdir()))
    if not looks_ours:
        raise GptclfError(f"{partial} is in the way of the run's checkpoints but is not a gptclf checkpoint "
                          "folder, so --overwrite leaves it alone", hint="move it, or choose another --out")
    if is_main:
        shutil.rmtree(partial)


def find_partial(path: str | Path) -> Path:
    """``--resume`` accepts the run directory (``runs/X``) or its ``runs/X.partial``."""
    path = Path(path).expanduser()
    candidates = [path] if path.name.endswith(".partial") else [partial_dir(path), path]
    for c in candidates:
        if (c / RUN_FILE).is_file():
            return c
    if (path / "metrics.json").is_file() and not partial_dir(path).exists():
        raise GptclfError(f"{path} is a finished run: there is nothing to resume",
                          hint="start a new run with another --out")
    raise GptclfError(f"no checkpoint to resume at {path} (looked for {partial_dir(path) / RUN_FILE})",
                      hint="pass the --out directory of a run that was interrupted after its first "
                           "checkpoint (see --checkpoint-every)")


def data_fingerprint(*datasets: Any) -> str:
    """A hash of the token ids and labels of every split: a resumed run must see the same data."""
    h = hashlib.sha256()
    for ds in datasets:
        lengths = ds.lengths
        h.update(lengths.tobytes())
        if len(ds):
            h.update(np.concatenate([np.asarray(x, dtype=np.int64) for x in ds.ids]).tobytes())
        h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()


def write_run_info(directory: Path, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / RUN_FILE, {"format": CHECKPOINT_FORMAT, **info})


def read_run_info(directory: Path) -> dict[str, Any]:
    """``run.json``, with every field a resume relies on checked (a damaged or edited file
    is a clear error, never a KeyError deep in the loop)."""
    path = directory / RUN_FILE
    info = read_json_object(path)
    if info.get("format") != CHECKPOINT_FORMAT:
        raise GptclfError(f"{path} is not a gptclf checkpoint ({str(info.get('format'))[:80]!r})")
    _expect(path, info, "out", str)
    _expect(path, info, "train", dict)
    _expect(path, info, "data_fingerprint", str)
    if not isinstance(info.get("world_size", 1), int) or isinstance(info.get("world_size", 1), bool) \
            or not 1 <= info.get("world_size", 1) <= 65536:
        raise GptclfError(f"{path}: 'world_size' must be a whole number of processes", hint=DAMAGED)
    return info


DAMAGED = "the checkpoint is damaged: start again with --overwrite"


def _expect(path: Path, d: dict[str, Any], key: str, kind: type, minimum: int | None = None) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool \
            or (minimum is not None and value < minimum):
        raise GptclfError(f"{path}: {key!r} is missing or not a valid {kind.__name__}"
                          + (f" >= {minimum}" if minimum is not None else ""), hint=DAMAGED)
    return value


def check_state(path: Path, state: dict[str, Any]) -> None:
    """Every field of ``checkpoint.json`` the loop reads, with its type and range."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise GptclfError(f"{path} is not a gptclf checkpoint", hint=DAMAGED)
    name = _expect(path, state, "tensors", str)
    if Path(name).name != name or not name.endswith(".safetensors"):  # never a path out of the folder
        raise GptclfError(f"{path}: 'tensors' must name a .safetensors file in the same folder", hint=DAMAGED)
    for key, minimum in (("epoch", 0), ("batch", 0), ("global_step", -1), ("examples_seen", 0)):
        _expect(path, state, key, int, minimum)
    history = _expect(path, state, "history", dict)
    if set(history) != {"steps", "epochs"} or not all(
            isinstance(v, list) and all(isinstance(e, dict) for e in v) for v in history.values()):
        raise GptclfError(f"{path}: 'history' must hold the lists 'steps' and 'epochs'", hint=DAMAGED)
    _expect(path, state, "optimizer", dict)
    if state.get("early_stopping") is not None:
        _expect(path, state, "early_stopping", dict)


# ------------------------------------------------------------- optimizer state, no pickle


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON structure.

    Each tensor is replaced in the structure by ``{"tensor": key}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().to("cpu").contiguous()
            return {"tensor": key}
        if isinstance(obj, dict):
            # State keys are parameter indices (ints); JSON keys are strings, so record them.
            return {"dict": [[k, walk(v, f"{key}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"tuple" if isinstance(obj, tuple) else "list": [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return {"value": obj}
        raise GptclfError(f"cannot checkpoint optimizer state of type {type(obj).__name__} at {key}")

    return tensors, walk(sd, "optim")


def unflatten_optimizer_state(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in structure:
        return tensors[structure["tensor"]]
    if "dict" in structure:
        return {k: unflatten_optimizer_state(v, tensors) for k, v in structure["dict"]}
    if "list" in structure:
        return [unflatten_optimizer_state(v, tensors) for v in structure["list"]]
    if "tuple" in structure:
        return tuple(unflatten_optimizer_state(v, tensors) for v in structure["tuple"])
    return structure["value"]


# ------------------------------------------------------------------------ save and load


class Checkpointer:
    """Writes checkpoints into ``directory`` every ``every`` optimizer steps and at epoch ends."""

    def __init__(self, directory: Path, every: int, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.every = every
        self.enabled = enabled and every > 0

    def due(self, step: int) -> bool:
        """``step`` counts optimizer steps from 0 (the book's ``global_step``)."""
        return self.enabled and (step + 1) % self.every == 0

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        # Named by position, so a new checkpoint never overwrites the file the current
        # checkpoint.json names (an epoch-end checkpoint can follow a step one at the same step).
        name = f"checkpoint-e{state['epoch']:04d}-b{state['batch']:07d}.safetensors"
        with atomic_path(self.directory / name) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"format": CHECKPOINT_FORMAT})
        fsync_path(self.directory)
        write_json_atomic(self.directory / STATE_FILE, {"format": CHECKPOINT_FORMAT, "tensors": name, **state})
        fsync_path(self.directory)
        for old in self.directory.glob("checkpoint-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.directory / name

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def load_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The last checkpoint's JSON state and tensors, or ``None`` when none was written yet."""
    from safetensors.torch import load_file

    state_path = directory / STATE_FILE
    if not state_path.exists():
        return None
    state = read_json_object(state_path)
    check_state(state_path, state)
    try:
        tensors = load_file(str(directory / state["tensors"]))
    except Exception as e:  # noqa: BLE001 - any damage is the same user problem
        raise GptclfError(f"the checkpoint in {directory} cannot be read: {str(e)[:200]}", hint=DAMAGED) from None
    return state, tensors


# ------------------------------------------------------------------------- RNG states


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNGs the loop can draw from (dropout): CPU and the current CUDA device."""
    out = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


# ----------------------------------------------------------------------- Ctrl-C handling


class DeferredInterrupt:
    """The first Ctrl-C (SIGINT) is noted and acted on at the end of the current step.

    That way the model, the optimizer and the checkpoint are consistent when the run
    stops; a second Ctrl-C interrupts at once (raises :class:`KeyboardInterrupt`).
    Outside the main thread signals cannot be handled, and this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def iter_state_tensors(prefix: str, tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for k, v in tensors.items():
        if k.startswith(prefix):
            yield k[len(prefix):], v
