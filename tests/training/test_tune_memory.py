"""gptclf tune holds one trunk cache per distinct cut until the search ends: its RAM budget
counts all of them (it counted one), and --cache disk puts every cut's cache on disk (only
the first was; the deeper cuts were extended into RAM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptclf.config import TrainConfig, TuneOptions
from gptclf.data.encoding import EncodedDataset
from gptclf.training import tune
from gptclf.training.trunk_cache import cache_mode

from helpers import random_classifier, write_gpt2_config_only

BASE = dict(init="random", epochs=1, eval_freq=100, checkpoint_every=0, progress=False, trainable="1", lr=2e-3)
# 3 blocks: the head only (cut 3), one block (cut 2), two blocks (cut 1): three caches.
TRAINABLES = "last_layer,last_block,2"


def test_the_budget_counts_every_copy(tmp_path: Path) -> None:
    model = random_classifier(write_gpt2_config_only(tmp_path / "m"))  # 32 dims
    ds = EncodedDataset(ids=[[1] * 10] * 100, labels=torch.zeros(100, dtype=torch.long), max_length=10)
    need = 100 * 10 * 32 * 4  # tokens x dims x fp32: one copy
    cfg = TrainConfig(cache="auto", cache_max_gb=1.5 * need / 2**30)
    lines: list[str] = []
    assert cache_mode(cfg, model, 1, [ds], None, torch.device("cpu"), lines.append) == "ram"
    assert cache_mode(cfg, model, 1, [ds], None, torch.device("cpu"), lines.append, copies=3) == "disk"
    assert "(3 cuts)" in lines[-1] and "spilling it to disk" in lines[-1]
    # What another --long-text mode's caches already hold counts too.
    assert cache_mode(cfg, model, 1, [ds], None, torch.device("cpu"), lines.append, held=need) == "disk"


@pytest.fixture
def sms_jsonl(sms_file: Path, tmp_path: Path) -> Path:
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    ham = [t for lab, t in rows if lab == "ham"][:60]
    spam = [t for lab, t in rows if lab == "spam"][:60]
    path = tmp_path / "sms.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for pair in zip(ham, spam) for lab, t in zip(("ham", "spam"), pair)))
    return path


def test_tune_budgets_for_every_cut(sms_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[int] = []
    real = tune.cache_mode
    monkeypatch.setattr(tune, "cache_mode", lambda *a, **k: copies.append(k.get("copies", 1)) or real(*a, **k))
    model = write_gpt2_config_only(tmp_path / "tiny", n_layer=3, n_embd=32)
    tune.run_tune(TrainConfig(model=str(model), data=str(sms_jsonl), out=str(tmp_path / "run"), **BASE),
                  TuneOptions(trainables=TRAINABLES, lrs="2e-3"))
    assert copies == [3]


def test_cache_disk_puts_every_cut_on_disk(sms_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTCLF_CACHE_DIR", str(cache))
    seen: list[list[list[str]]] = []
    real = tune.run_trial

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        # the spills while the candidates run, and what each holds
        seen.append([sorted(p.name for p in d.iterdir()) for d in (cache / "trunk").iterdir()])
        return real(*args, **kwargs)

    monkeypatch.setattr(tune, "run_trial", counting)
    model = write_gpt2_config_only(tmp_path / "tiny", n_layer=3, n_embd=32)
    out = tune.run_tune(TrainConfig(model=str(model), data=str(sms_jsonl), out=str(tmp_path / "run"), cache="disk",
                                    **BASE), TuneOptions(trainables=TRAINABLES, lrs="2e-3"))
    assert seen[0] == [["trunk.npy"]] * (3 * 3)  # 3 cuts x (train, validation, test), each a memory map
    assert list((cache / "trunk").iterdir()) == []  # all removed at the end
    assert json.loads((out / "metrics.json").read_text())["trunk_cache"] == "disk"
