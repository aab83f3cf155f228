"""Determinism through the CLI: the same seed gives the same metrics, history and weights, bit for bit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import cli, train_args

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def test_same_seed_same_metrics_and_weights_through_the_cli(capsys, tmp_path: Path, micro_gpt2_config: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"{'buy now' if i % 2 else 'see you'} {i} {'!' * (i % 5)},"
                                          f"{'spam' if i % 2 else 'ham'}\n" for i in range(80)))

    def run(name: str, seed: str) -> Path:
        code, _, err = cli(capsys, *train_args(micro_gpt2_config, f, tmp_path / name, "--epochs", "2",
                                               "--eval-freq", "5", "--seed", seed, "--lr", "1e-3"))
        assert code == 0, err
        return tmp_path / name

    timing = re.compile(r"seconds|per_second")

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not timing.search(k)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    a, b, c = run("a", "1"), run("b", "1"), run("c", "2")
    for name in ("metrics.json", "history.json"):
        assert strip(json.loads((a / name).read_text())) == strip(json.loads((b / name).read_text())), name
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    ca["train"].pop("out"), cb["train"].pop("out")
    assert ca == cb
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # and the seed does matter
