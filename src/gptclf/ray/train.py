"""``gptclf train --engine ray``: the same DDP training loop as under ``torchrun``
(:func:`gptclf.training.recipe.run_training`), with Ray Train's ``TorchTrainer`` starting the
processes and their process group (gloo on CPUs, NCCL on GPUs) instead of torchrun. It sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as torchrun does, so the loop, its batches and its run
directory are the ones a torchrun run of the same world size and seed gives.

Faults: rank 0 checkpoints into ``<out>.partial`` as always (``--checkpoint-every``); when a
worker dies, Ray Train (``FailureConfig``) starts the group again and every worker resumes from
that checkpoint (:func:`gptclf.training.recipe.resume_training`), to the weights an uninterrupted
run gives; a group restarted after rank 0 saved the run returns at once. On a cluster ``--out`` must
be on storage every node sees (docs/scaling.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import GptclfError
from .cluster import connect

MAX_FAILURES = 2  # group restarts after a worker failure, each resuming from the last checkpoint


def train(cfg: TrainConfig, *, workers: int, gpus_per_worker: float = 0, address: str | None = None,
          resume: str | Path | None = None, max_failures: int = MAX_FAILURES) -> Path:
    """Train ``cfg`` (or continue the run ``resume``) on ``workers`` Ray Train workers; the run
    directory, as ``gptclf train`` writes it."""
    from ..training.state import discard_partial, find_partial, partial_dir, read_run_info

    if workers < 1:
        raise GptclfError(f"--workers must be at least 1, not {workers}")
    if resume is not None:
        out = Path(read_run_info(find_partial(resume))["out"])
    else:
        out = _absolute_out(cfg)
        # A restarted group resumes whatever <out>.partial holds: it must be this run's.
        if partial_dir(out).exists() and cfg.overwrite:
            discard_partial(partial_dir(out))
        elif partial_dir(out).exists():
            raise GptclfError(f"{partial_dir(out)} holds the checkpoints of an unfinished run to {out}",
                              hint=f"continue it with 'gptclf train --engine ray --resume {out}', or start "
                                   f"again with --overwrite (which deletes {partial_dir(out)})")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            # Refused here, not by the workers: a restarted group takes a finished run for its own.
            raise GptclfError(f"{out} already exists and is not empty", hint="choose another --out")
        cfg = TrainConfig(**(asdict(cfg) | {"out": str(out)}))
    connect(address)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker, train_loop_config={"options": asdict(cfg), "out": str(out), "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus_per_worker),
                                     resources_per_worker={"CPU": 1} | ({"GPU": gpus_per_worker}
                                                                        if gpus_per_worker else {})),
        run_config=RunConfig(name=f"gptclf-{out.name}", failure_config=FailureConfig(max_failures=max_failures)))
    try:
        trainer.fit()
    except Exception as e:  # Ray Train wraps what a worker raised in its own errors
        raise _user_error(e) or e
    if finished_run(out) and partial_dir(out).exists():
        discard_partial(partial_dir(out))  # rank 0 saved the run but died before removing its checkpoints
    return out


def finished_run(out: Path) -> bool:
    """Whether ``out`` holds a saved run that was not interrupted."""
    from ..rundir.save import is_interrupted_run

    return (out / "metrics.json").is_file() and not is_interrupted_run(out)


def _absolute_out(cfg: TrainConfig) -> Path:
    """``--out`` (or the default ``runs/<timestamp>``) as an absolute path, decided once here
    rather than by rank 0 so that a restarted group finds the same checkpoints."""
    from ..rundir.save import default_run_dir

    return Path(cfg.out or default_run_dir()).expanduser().resolve()


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``run_training`` as under torchrun; when ``<out>.partial`` holds the
    run (``--resume``, or the group restarted after a failure), ``resume_training`` from its last
    checkpoint."""
    from ..training.recipe import resume_training, run_training
    from ..training.state import RUN_FILE, partial_dir

    if os.path.isdir(config["cwd"]):  # relative --data/--model paths, as on the command line
        os.chdir(config["cwd"])
    out = Path(config["out"])
    if finished_run(out):
        # A worker died after rank 0 had saved the run (at the last barrier, or as the group
        # shut down): the restarted group has nothing left to do. train() refused a finished
        # --out before the first start, so this run is the job's own.
        return
    if (partial_dir(out) / RUN_FILE).is_file():  # --resume, or a restart after a failure
        resume_training(out, progress=False)
    else:
        run_training(TrainConfig(**config["options"] | {"progress": False}))


def _user_error(e: BaseException) -> GptclfError | None:
    """The GptclfError a worker raised (a missing file, a bad option), found in Ray's wrapping,
    so the user gets its one line rather than Ray's traceback."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen or x is None:
            continue
        seen.add(id(x))
        if isinstance(x, GptclfError):
            return x
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
        stack += list(getattr(x, "worker_failures", {}).values())
    return None
