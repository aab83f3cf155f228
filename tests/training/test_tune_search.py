"""gptclf tune: every candidate equals a standalone run with its settings (the shared trunk
cache, built once at the deepest cut and extended, is exact); the winner is a normal run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import write_gpt2_config_only
from gptclf.cli import build_parser
from gptclf.config import TrainConfig, TuneOptions
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.training.recipe import run_training
from gptclf.training.tune import Candidate, run_tune, search_space

BASE = dict(init="random", epochs=2, eval_freq=100, checkpoint_every=0, progress=False, trainable="1", lr=2e-3)


@pytest.fixture(scope="module")
def sms_csv(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    ham = [t for lab, t in rows if lab == "ham"][:100]
    spam = [t for lab, t in rows if lab == "spam"][:100]
    path = tmp_path_factory.mktemp("tune-data") / "sms.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for pair in zip(ham, spam) for lab, t in zip(("ham", "spam"), pair)))
    return path


@pytest.fixture(scope="module")
def tuned(sms_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("tune")
    model = write_gpt2_config_only(root / "tiny", n_layer=3, n_embd=32)
    lines: list[str] = []
    out = run_tune(TrainConfig(model=str(model), data=str(sms_csv), out=str(root / "best"), **BASE),
                   TuneOptions(trainables="last_layer,last_block", lrs="2e-3"), log=lines.append)
    return out, model, lines


def test_every_candidate_equals_its_standalone_run(tuned: tuple[Path, Path, list[str]], sms_csv: Path,
                                                   tmp_path: Path) -> None:
    out, model, lines = tuned
    m = json.loads((out / "metrics.json").read_text())
    rows = m["search"]
    # The default first (never pruned), then head only, then mean pooling at the default's depth and lr.
    assert [(r["trainable"], r["pooling"]) for r in rows] == \
        [("1", "last-nonpad"), ("last_layer", "last-nonpad"), ("1", "mean")]
    assert rows[0]["pruned_at_epoch"] is None and rows[0]["epochs_run"] == 2
    assert any("cuts [2, 3]" in line for line in lines)  # blocks 0-1 cached once, block 2 added once
    compared = []
    for r in rows[:2]:
        if r["pruned_at_epoch"] is not None:
            continue
        compared.append(r["trainable"])
        alone = run_training(TrainConfig(model=str(model), data=str(sms_csv), out=str(tmp_path / r["trainable"]),
                                         **{**BASE, "trainable": r["trainable"], "pooling": r["pooling"]}),
                             log=lambda s: None)
        am = json.loads((alone / "metrics.json").read_text())
        assert am["best_epoch"] == r["best_epoch"]
        assert am["val_curve"][r["best_epoch"] - 1]["val_accuracy"] == r["val_accuracy"]
        assert am["val_curve"][r["best_epoch"] - 1]["val_loss"] == pytest.approx(r["val_loss"], abs=1e-6)
        if r["trainable"] == m["search_winner"]["trainable"] and r["pooling"] == m["search_winner"]["pooling"]:
            wa, wb = load_file(str(alone / "model.safetensors")), load_file(str(out / "model.safetensors"))
            assert wa.keys() == wb.keys()
            for k in wa:
                assert torch.equal(wa[k], wb[k]), k
            assert am["test_accuracy"] == m["test_accuracy"]
            compared.append("winner")
    assert "winner" in compared or m["search_winner"]["pooling"] == "mean"


def test_the_winner_is_a_normal_run(tuned: tuple[Path, Path, list[str]]) -> None:
    out, _, lines = tuned
    m = json.loads((out / "metrics.json").read_text())
    best = max(m["search"], key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert {k: best[k] for k in ("trainable", "lr", "pooling")} == m["search_winner"]
    # Never worse on validation than the default recipe (the first row).
    assert (best["val_accuracy"], -best["val_loss"]) >= (m["search"][0]["val_accuracy"], -m["search"][0]["val_loss"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainable"] == best["trainable"] and cfg["pooling"] == best["pooling"]
    assert cfg["train"]["lr"] == best["lr"]
    clf = Classifier.load(out, device="cpu")
    assert len(clf.predict(["free prize call now", "see you later"])) == 2
    assert "search" in (out / "report.html").read_text()
    assert any("val acc" in line for line in lines)  # the terminal table
    # The last line states the winner's size and what it holds (this base is randomly
    # initialised from a config, so it cannot be rebuilt by name: saved whole).
    assert m["weights"]["mode"] == "full" and re.search(r": [0-9.]+ [kMG]?B \(self-contained\)$", lines[-1]), lines[-1]


def test_search_space_and_options() -> None:
    cfg = TrainConfig(model="gpt2-small", trainable="last_block", lr=1e-4).resolved()
    cands = search_space(cfg, TuneOptions(), n_layers=12)
    assert cands[0] == Candidate("last_block", 1e-4, "last-nonpad")
    # "1" is last_block: not tried twice.
    assert not any(c.trainable == "1" and c.lr == 1e-4 and c.pooling == "last-nonpad" for c in cands)
    assert {c.trainable for c in cands} == {"last_block", "last_layer", "1", "2", "4"}
    assert Candidate("last_block", 1e-4, "mean") in cands
    assert len(search_space(cfg, TuneOptions(trials=3), 12)) == 3
    assert len({(c.trainable, c.lr, c.pooling) for c in cands}) == len(cands)
    for bad, msg in [(TuneOptions(lrs="fast"), "--lrs"), (TuneOptions(poolings="max"), "--poolings"),
                     (TuneOptions(trainables="99"), "99")]:
        with pytest.raises(GptclfError, match=msg):
            search_space(cfg, bad, 12)
    args = build_parser().parse_args(["tune", "--model", "x", "--trials", "4", "--budget-s", "60", "--lrs", "1e-3"])
    assert (args.trials, args.budget_s, args.lrs, args.model) == (4, 60.0, "1e-3", "x")
    with pytest.raises(GptclfError, match="--trials"):
        TuneOptions(trials=0).check()


def test_short_texts_leave_the_search_as_it_was(tuned: tuple[Path, Path, list[str]], sms_csv: Path) -> None:
    """SMS-like data (every text within one window): no --long-text dimension, the same candidates
    as the search without one, and metrics.json says why."""
    from gptclf.data.splits import read_examples
    from gptclf.training.tune import long_text_modes

    cfg = TrainConfig(model="gpt2-small", trainable="last_block", lr=1e-4).resolved()
    lengths = np.array([len(e.text.split()) * 2 for e in read_examples(str(sms_csv))[0]])  # generous: 2 tokens a word
    modes, record = long_text_modes("truncate", lengths, 510, None)
    assert modes == ["truncate"] and not record["searched"] and record["longer_than_window"] == 0
    assert search_space(cfg, TuneOptions(), 12, modes) == search_space(cfg, TuneOptions(), 12)
    assert all(c.long_text is None for c in search_space(cfg, TuneOptions(), 12, modes))
    m = json.loads((tuned[0] / "metrics.json").read_text())
    assert m["long_text_search"]["modes"] == ["truncate"] and not m["long_text_search"]["searched"]
    assert all("long_text" not in r for r in m["search"]) and "long_text" not in m["search_winner"]
    # More than 5 % of the texts longer than the window: the default recipe in each mode first.
    long_modes, record = long_text_modes("chunk", np.array([600] * 6 + [10] * 94), 510, None)
    assert long_modes == ["chunk", "truncate"] and record["searched"] and record["share"] == 0.06
    cands = search_space(cfg, TuneOptions(), 12, long_modes)
    assert [c.long_text for c in cands[:2]] == ["chunk", "truncate"] and len(cands) == 2 * len(search_space(cfg, TuneOptions(), 12))
    assert len(search_space(cfg, TuneOptions(trials=3), 12, long_modes)) == 3
    assert long_text_modes("truncate", lengths, 510, "head-tail,chunk")[0] == ["truncate", "head-tail", "chunk"]
    with pytest.raises(GptclfError, match="--long-texts: 'middle'"):
        long_text_modes("truncate", lengths, 510, "middle")


def test_budget_stops_new_candidates_but_the_default_always_runs(sms_csv: Path, tmp_path: Path) -> None:
    model = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    lines: list[str] = []
    out = run_tune(TrainConfig(model=str(model), data=str(sms_csv), out=str(tmp_path / "run"), **{**BASE, "epochs": 1}),
                   TuneOptions(budget_s=1e-9), log=lines.append)
    m = json.loads((out / "metrics.json").read_text())
    assert [(r["trainable"], r["lr"], r["pooling"]) for r in m["search"]] == [("1", 2e-3, "last-nonpad")]
    assert m["search_winner"] == {"trainable": "1", "lr": 2e-3, "pooling": "last-nonpad"}
    assert any("budget" in line and "not tried" in line for line in lines)


def test_tune_without_a_head_bias_saves_what_config_json_says(sms_csv: Path, tmp_path: Path) -> None:
    """The winner is built as gptclf train builds it, --no-head-bias included: its head has no
    bias, config.json says so, and the directory loads and predicts (a head with a bias under a
    config without one was a load error)."""
    model = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    out = run_tune(TrainConfig(model=str(model), data=str(sms_csv), out=str(tmp_path / "run"), head_bias=False,
                               **{**BASE, "epochs": 1}), TuneOptions(trainables="last_block", lrs="2e-3"))
    assert json.loads((out / "config.json").read_text())["head_bias"] is False
    assert not any(k.startswith("out_head.bias") for k in load_file(str(out / "model.safetensors")))
    preds = Classifier.load(out, device="cpu").predict(["WIN a prize now", "see you at lunch"])
    assert [p["label"] in ("ham", "spam") for p in preds] == [True, True]


def test_ctrl_c_saves_the_best_finished_candidate(sms_csv: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the third candidate (as the loop reports it: run_trial raises KeyboardInterrupt)
    saves the best of the two finished ones, says so, and still ends as an interrupt (exit 130)."""
    from gptclf.training import tune

    real, calls = tune.run_trial, []

    def interrupted_third(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tune, "run_trial", interrupted_third)
    model = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    lines: list[str] = []
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_tune(TrainConfig(model=str(model), data=str(sms_csv), out=str(out), **{**BASE, "epochs": 1}),
                 TuneOptions(trainables="last_layer,last_block", lrs="2e-3,5e-3"), log=lines.append)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["search"]) == 2 and m["search_interrupted"] is True and m["interrupted"] is False
    best = max(m["search"], key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert m["search_winner"] == {k: best[k] for k in ("trainable", "lr", "pooling")}
    assert any("interrupted in candidate 3/" in ln and "saving the best of the 2 finished" in ln for ln in lines)
    assert Classifier.load(out, device="cpu").predict(["WIN a prize now"])[0]["label"] in ("ham", "spam")
