"""The fine-tuned model directory: self-describing, safetensors + JSON, never a pickle.

::

    runs/20261125-221500/
      model.safetensors   the tensors training changed (the base model is named in config.json,
                          see gptclf.rundir.weights), or with --self-contained the whole classifier
                          (backbone with the new head; no vocabulary head)
      config.json         architecture, labels, tokenizer, max length, pad id, pooling, ...
                          (gptclf.config.RunConfig)
      metrics.json        train/val/test accuracy, loss, per-class report, sizes, seconds
      history.json        losses every eval_freq steps, accuracies every epoch
      loss-plot.png       the book's two plots
      accuracy-plot.png
      confusion-matrix.png  test split
      report.html         data, settings, curves, metrics, most confident test mistakes
      test.jsonl          the test split ({"text", "label"} per line): what `gptclf evaluate`
                          reads when no --data is given
    runs/latest -> 20261125-221500

The directory is written under a temporary name and renamed into place, so a run that
dies while saving leaves no half-written model behind. While a run trains, its
checkpoints live beside it in ``runs/20261125-221500.partial/`` (see
:mod:`gptclf.training.state`), removed once the run directory is saved.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .. import tasks
from ..config import RunConfig
from ..errors import GptclfError
from ..files import atomic_directory, lock_file, lock_holder, read_json_object, remove_stale_temporaries, \
    temporary_name, unlock_file, write_json_atomic, write_text_atomic
from .plots import plot_history
from .report import write_run_report


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def claim_run_dir(out: str | Path | None, root: str | Path = "runs") -> Iterator[Path]:
    """The output directory of a run, locked against every other gptclf process for as long as
    the block runs (from before training to after the save): ``out``, refused at once if
    another run holds it, or (``None``) the first ``root/<timestamp>[-n]`` that no finished,
    unfinished or running run has, so two runs started in the same second get two names."""
    root = Path(out).parent if out is not None else Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GptclfError(f"cannot create the output folder {root}: {e.strerror or e}") from None
    if out is not None:
        path, fd = Path(out), lock_file(_lock_path(Path(out)))
        if fd is None:
            raise GptclfError(f"another gptclf process (pid {lock_holder(_lock_path(path))}) is writing to {path}",
                              hint="wait for it to finish, or choose another --out")
    else:
        path, fd = _free_default(root)
    try:
        yield path
    finally:
        unlock_file(fd, _lock_path(path))


def default_run_dir(root: str | Path = "runs") -> Path:
    """A free ``root/<timestamp>[-n]`` name, not held: for a launcher (Ray Train) that decides
    the name once and passes it on as an explicit ``--out``, which the run itself then locks."""
    Path(root).mkdir(parents=True, exist_ok=True)
    path, fd = _free_default(Path(root))
    unlock_file(fd, _lock_path(path))
    return path


def _free_default(root: Path) -> tuple[Path, int]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        if path.exists() or path.with_name(path.name + ".partial").exists():
            continue
        fd = lock_file(_lock_path(path))
        if fd is None:
            continue  # a run started this second holds it
        if path.exists() or path.with_name(path.name + ".partial").exists():
            unlock_file(fd, _lock_path(path))  # it finished (or began) between the check and the lock
            continue
        return path, fd
    raise GptclfError(f"{root}: no free run name for {stamp}", hint="pass --out")


def classifier_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights with its class head, contiguous and unshared (safetensors rule)."""
    backbone = getattr(model, "backbone", model)
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in backbone.state_dict().items():
        if v.data_ptr() in seen and v.numel():
            continue  # a tied weight is stored once
        seen[v.data_ptr()] = k
        out[k] = v.detach().to("cpu").contiguous()
    return out


TEST_SPLIT = "test.jsonl"


def directory_bytes(directory: Path) -> int:
    """What a run directory takes on disk (its files' sizes)."""
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file() and not f.is_symlink())


def examples_jsonl(examples: Any) -> str:
    """``{"text", "label"}`` per line: the run's test split, readable by every gptclf command."""
    import json

    return "".join(json.dumps({"text": e.text, "label": list(e.labels) if e.labels is not None else e.label},
                              ensure_ascii=False) + "\n" for e in examples)


def is_interrupted_run(path: Path) -> bool:
    try:
        return bool(read_json_object(Path(path) / "metrics.json").get("interrupted", False))
    except GptclfError:
        return False


def save_run(out: Path, model: nn.Module, tokenizer: Any, run_config: RunConfig,
             metrics: dict[str, Any], history: Any, replace_interrupted: bool = False,
             tensors: dict[str, torch.Tensor] | None = None, update_latest_link: bool = True,
             files: dict[str, str] | None = None) -> Path:
    """Write a run directory atomically.

    ``replace_interrupted``: a resumed run replaces its interrupted save. ``tensors``
    replaces the full classifier state dict (a LoRA run saves only what trained);
    ``update_latest_link=False`` leaves ``<parent>/latest`` alone (exports). ``files``: more
    text files to write into the directory, by name (the test split).
    """
    from safetensors.torch import save_file

    out = Path(out)
    replacing = replace_interrupted and out.exists() and is_interrupted_run(out)
    if out.exists() and any(out.iterdir()) and not replacing:
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
    umask = os.umask(0)
    os.umask(umask)
    with atomic_directory(out, replace=replacing) as tmp:
        save_file(tensors if tensors is not None else classifier_state_dict(model), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "producer": "gptclf"})
        os.chmod(tmp / "model.safetensors", 0o666 & ~umask)
        tokenizer.save(tmp)
        write_json_atomic(tmp / "config.json", run_config.to_json())
        write_json_atomic(tmp / "metrics.json", metrics)
        hist = asdict(history) if hasattr(history, "__dataclass_fields__") else history
        write_json_atomic(tmp / "history.json", hist)
        for name, text in (files or {}).items():
            write_text_atomic(tmp / name, text)
        try:
            plot_history(hist, tmp, (run_config.train or {}).get("epochs", 1), tasks.get(run_config.task).score_name)
        except Exception as e:  # a plot must never cost the user the model
            print(f"warning: could not draw the plots: {e}")
        try:
            write_run_report(tmp, out.name)
        except Exception as e:  # nor must the report
            print(f"warning: could not write report.html: {e}")
    if update_latest_link:
        update_latest(out)
    return out


def update_latest(run_dir: Path) -> None:
    """Point ``<runs>/latest`` at ``run_dir`` (atomically: a new link renamed over the old)."""
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return  # a real directory called 'latest': leave it alone
    remove_stale_temporaries(link)  # a writer killed between symlink() and replace()
    tmp = temporary_name(link)
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError:
        pass  # filesystems without symlinks: runs/latest is a convenience only
