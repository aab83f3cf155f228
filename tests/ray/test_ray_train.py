"""gptclf train --engine ray: Ray Train's TorchTrainer runs the DDP loop; 2 workers on the local
2-CPU instance give the run directory a torchrun run on 2 processes gives (same seed)."""

from __future__ import annotations

import json
import subprocess
import sys
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
