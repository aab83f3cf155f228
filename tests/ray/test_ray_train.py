"""gptclf train --engine ray: Ray Train's TorchTrainer runs the DDP loop; 2 workers on the local
2-CPU instance give the run directory a torchrun run on 2 processes gives (same seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from gptclf.config import TrainConfig

from helpers import env_with, sms_head_csv

TIMINGS = ("seconds", "examples_per_second")  # the only entries two equal runs may differ in


def _untimed(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if not k.endswith(TIMINGS)}
    return [_untimed(v) for v in d] if isinstance(d, list) else d


def _content(run: Path) -> dict:
    """What a run directory says, but where it is and how long it took."""
    config = json.loads((run / "config.json").read_text())
    config["train"].pop("out")
    return {name: _untimed(json.loads((run / name).read_text())) for name in ("metrics.json", "history.json")} \
        | {"config.json": config, "test.jsonl": (run / "test.jsonl").read_text()}


@pytest.mark.slow
def test_two_ray_workers_give_the_torchrun_run(ray_local: Any, sms_file: Path, tiny_gpt2: Path,
                                               tmp_path: Path) -> None:
    from gptclf.ray.train import train

    data = sms_head_csv(sms_file, tmp_path / "small.csv", 200)
    opts = dict(model=str(tiny_gpt2), data=str(data), balance="none", epochs=2, eval_freq=5, lr=1e-3,
                batch_size=4, progress=False)
    args = [a for k, v in opts.items() if k != "progress" for a in (f"--{k.replace('_', '-')}", str(v))]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "gptclf", "train", *args, "--out", str(tmp_path / "torchrun"), "--quiet"],
                       capture_output=True, text=True, timeout=300, env=env_with(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = train(TrainConfig(**opts, out=str(tmp_path / "ray")), workers=2)
    assert out == tmp_path / "ray" and json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert _content(out) == _content(tmp_path / "torchrun")
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "torchrun" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # one thread each: bit for bit


def _kill_rank_1_after_the_first_checkpoint(out: Path, done: threading.Event, killed: list[int]) -> None:
    """SIGKILL the Ray Train worker that is not rank 0 (rank 0 holds the run's lock file, with its
    pid in it) once ``<out>.partial`` holds a checkpoint, as a node lost mid-run would."""
    import psutil

    state, lock = out.with_name(out.name + ".partial") / "checkpoint.json", out.with_name(f".{out.name}.lock")
    while not done.wait(0.05):
        if not state.is_file():
            continue
        rank0 = int(lock.read_text(encoding="ascii").strip() or 0)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []) and proc.info["pid"] != rank0:
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_checkpoint_to_the_same_weights(ray_local: Any, sms_file: Path,
                                                                        tiny_gpt2: Path, tmp_path: Path) -> None:
    from gptclf.ray.train import train

    data = sms_head_csv(sms_file, tmp_path / "small.csv", 200)
    opts = dict(model=str(tiny_gpt2), data=str(data), balance="none", epochs=2, eval_freq=5, lr=1e-3,
                batch_size=4, checkpoint_every=2, progress=False)
    out, done, killed = tmp_path / "killed", threading.Event(), []
    watcher = threading.Thread(target=_kill_rank_1_after_the_first_checkpoint, args=(out, done, killed))
    watcher.start()
    try:
        train(TrainConfig(**opts, out=str(out)), workers=2, max_failures=1)
    finally:
        done.set()
        watcher.join()
    assert killed, "no worker was killed: the test proves nothing"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_step"] > 0 and not metrics["interrupted"]  # resumed from the checkpoint
    assert not out.with_name("killed.partial").exists()
    whole = train(TrainConfig(**opts, out=str(tmp_path / "whole")), workers=2)
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    assert (out / "test.jsonl").read_text() == (whole / "test.jsonl").read_text()


@pytest.mark.parametrize("checkpoints_left", [False, True])
def test_a_group_restarted_after_the_run_was_saved_returns(random_run: Path, tmp_path: Path,
                                                           checkpoints_left: bool) -> None:
    """A worker that dies after rank 0 saved the run (it waits at the last barrier) makes Ray Train
    start the group again: it must find the finished run and return, not refuse the full --out (or
    resume from checkpoints rank 0 had not removed yet)."""
    import shutil
    from dataclasses import asdict

    from gptclf.ray.train import _worker
    from gptclf.training.state import partial_dir, write_run_info

    out = tmp_path / "run"
    shutil.copytree(random_run, out)
    if checkpoints_left:
        write_run_info(partial_dir(out), {"out": str(out), "train": {}, "data_fingerprint": "x", "world_size": 2})
    before = sorted(p.name for p in out.iterdir())
    assert _worker({"options": asdict(TrainConfig(out=str(out))), "out": str(out), "cwd": str(tmp_path)}) is None
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_finished_out_is_refused_before_ray_starts(random_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by the driver: a worker would take the finished run for the job's own and return."""
    import gptclf.ray.train as rtrain
    from gptclf.errors import GptclfError

    monkeypatch.setattr(rtrain, "connect", lambda *a: pytest.fail("Ray was started"))
    with pytest.raises(GptclfError, match="already exists and is not empty"):
        rtrain.train(TrainConfig(out=str(random_run)), workers=2)
