"""Runs killed while saving: a writer SIGKILLed at random moments never leaves a broken run directory."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gptclf.inference.classifier import Classifier

from helpers import SRC

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


DRIVER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from gptclf.models import registry as models
    from gptclf.models.classifier import SequenceClassifier, replace_head
    from gptclf.models.gpt2 import GPT2Config
    from gptclf.config import RunConfig
    from gptclf.rundir.save import save_run
    from gptclf.tokenizers.gpt2 import GPT2Tokenizer

    root = Path(sys.argv[1])
    cfg = GPT2Config(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=1)
    model = SequenceClassifier(replace_head(models.build_model(cfg), 2))
    tok = GPT2Tokenizer()
    i = len([p for p in root.iterdir() if p.name.startswith("run-")]) if root.exists() else 0
    print("ready", flush=True)
    while True:
        with torch.no_grad():
            model.backbone.out_head.bias.fill_(float(i))  # each run's weights say which run it is
        run_config = {"labels": ["a", "b"], "max_length": 32, "pad_id": 50256, "pooling": "last-nonpad",
                      "padding": "dynamic", "train": {"epochs": 1}, "run_index": i}
        save_run(root / f"run-{i:05d}", model, tok, RunConfig.for_model(model, tok, **run_config), {"i": i},
                 {"steps": [], "epochs": []})
        i += 1
""")


def test_runs_survive_sigkill_at_random_points(tmp_path: Path) -> None:
    """Kill a process that saves runs in a loop at random moments: every run directory that
    exists is complete and loads, ``latest`` always points at a complete run, and a
    killed writer's temporary directory is cleaned up by the next save."""
    kills = int(os.environ.get("GPTCLF_KILLS", "6"))
    root = tmp_path / "runs"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    rng = random.Random(int(os.environ.get("GPTCLF_KILL_SEED", "7")))
    mid_save = 0
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        leftovers = [p for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
        mid_save += any(".tmp-" in p.name for p in leftovers)
        # At most the one save that was cut short has left a (hidden) temporary.
        assert len([p for p in leftovers if ".tmp-" in p.name and p.is_dir()]) <= 1, leftovers
    runs = sorted(p for p in root.iterdir() if p.name.startswith("run-"))
    assert runs, "no run was ever saved: the kills came too early to test anything"
    for i, run in enumerate(runs):
        assert run.name == f"run-{i:05d}"  # no gaps: a run cut short is redone under its name
        clf = Classifier.load(run)
        assert clf.config["run_index"] == i
        assert float(clf.model.backbone.out_head.bias[0]) == float(i)
        assert json.loads((run / "metrics.json").read_text()) == {"i": i}
    latest = root / "latest"
    if latest.is_symlink():
        assert latest.resolve().parent == root.resolve() and Classifier.load(latest).config["run_index"] >= 0
    print(f"\n{kills} kills, {mid_save} while a save was being written, {len(runs)} complete runs, all loadable")
