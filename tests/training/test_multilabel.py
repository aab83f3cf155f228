"""--multi-label training: the loss, the thresholds, the metrics, config.json, and end-to-end runs
(CLI with a delimited CSV, the Python API with a DataFrame list column; full fine-tuning, the
frozen-trunk cache with --balance weight, LoRA) on a keyword task a tiny model learns."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import gptclf
from gptclf.config import RunConfig, TrainConfig
from gptclf.errors import GptclfError
from gptclf.tasks import MULTI_LABEL
from gptclf.tasks.multi_label import fit_thresholds, label_pos_weights, multilabel_report
from helpers import cli

pytestmark = pytest.mark.usefixtures("one_thread")

KEYWORDS = {"food": "pizza", "sports": "goal", "tech": "laptop"}
FILLER = ("the", "a", "today", "we", "saw", "news", "about", "it", "very", "nice")


def keyword_rows(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Each label is on a text exactly when its keyword is (40 % each, independently; some texts have none)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        labs = [k for k in KEYWORDS if rng.random() < 0.4]
        words = [rng.choice(FILLER) for _ in range(4)] + [KEYWORDS[k] for k in labs]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(labs)
    return texts, labels


# ------------------------------------------------------------------------------ units


def test_bce_step_loss_is_the_mean_over_examples_and_labels() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    whole = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert torch.allclose(MULTI_LABEL.step_loss(logits, y, None, 6.0), whole)
    # two micro-batches of one step add up to the whole batch's mean
    assert torch.allclose(MULTI_LABEL.step_loss(logits[:2], y[:2], None, 6.0) + MULTI_LABEL.step_loss(logits[2:], y[2:], None, 6.0), whole)
    w = label_pos_weights(y)
    assert torch.allclose(w, (6 - y.sum(0)) / y.sum(0))
    weighted = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=w)
    assert torch.allclose(MULTI_LABEL.step_loss(logits, y, w, 6.0), weighted)
    with pytest.raises(GptclfError, match="no training example"):
        label_pos_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_thresholds_maximise_each_labels_f1_on_validation() -> None:
    p = np.array([[0.9, 0.2, 0.3], [0.35, 0.1, 0.6], [0.3, 0.4, 0.55], [0.1, 0.05, 0.52]])
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    t = fit_thresholds(p, y)
    assert t[0] == pytest.approx(0.325)  # midway: catches the second positive (0.35), not the negative at 0.3
    assert t[1] == 0.5                   # no positive in validation: the default
    assert t[2] == pytest.approx(0.535)  # F1 2/3 (0.6 and 0.55 predicted) beats 0.5's F1 1/2 (three predicted)
    assert multilabel_report(y, p >= t, ["a", "b", "c"])["per_class"]["a"]["f1"] == 1.0
    # Never worse than 0.5 on validation, for any label
    rng = np.random.default_rng(0)
    p, y = rng.random((50, 4)), rng.random((50, 4)) > 0.6
    t = fit_thresholds(p, y)
    for j in range(4):
        f1 = lambda th: multilabel_report(y[:, [j]], p[:, [j]] >= th, ["x"])["micro_f1"]  # noqa: E731
        assert f1(t[j]) >= f1(0.5) and 0 < t[j] < 1


def test_the_multilabel_report_by_hand() -> None:
    y = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    pred = np.array([[1, 1], [1, 0], [0, 0]], dtype=bool)
    r = multilabel_report(y, pred, ["a", "b"])
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "predicted": 2}
    assert r["per_class"]["b"]["f1"] == 0.0 and r["per_class"]["b"]["support"] == 1
    assert r["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert r["macro_f1"] == 0.5 and r["exact_match"] == r["accuracy"] == pytest.approx(1 / 3)
    assert r["hamming_loss"] == pytest.approx(2 / 6)


def _config(**kw) -> dict:
    base = {"format": "gptclf/1", "architecture": {"arch": "gpt2"}, "labels": ["a", "b"], "tokenizer": {},
            "max_length": 8, "pooling": "last-nonpad"}
    return {**base, **kw}


def test_config_json_round_trip_and_old_runs_stay_single_label() -> None:
    old = RunConfig.from_json(_config())
    assert old.task == "single-label" and old.thresholds is None
    assert "multi_label" not in old.to_json() and "thresholds" not in old.to_json()
    new = RunConfig.from_json(_config(multi_label=True, thresholds={"a": 0.3, "b": 0.5}))
    assert new.task == "multi-label" and new.thresholds == {"a": 0.3, "b": 0.5}
    again = RunConfig.from_json(json.loads(json.dumps(new.to_json())))
    assert again.to_json() == new.to_json()
    for bad in ({"multi_label": "yes"}, {"multi_label": True, "thresholds": {"a": 0.3}},
                {"multi_label": True, "thresholds": {"a": 1.0, "b": 0.5}}, {"thresholds": {"a": 0.3, "b": 0.5}}):
        with pytest.raises(GptclfError):
            RunConfig.from_json(_config(**bad))


def test_undersampling_is_refused_before_any_data_is_read() -> None:
    with pytest.raises(GptclfError, match="undersample cannot be used with --multi-label") as e:
        TrainConfig(data="missing.csv", multi_label=True, balance="undersample").resolved()
    assert "--balance weight" in e.value.hint
    assert TrainConfig(data="sms-spam", multi_label=True).resolved().balance == "none"


# ------------------------------------------------------------------------- end to end

FAST = {"epochs": 3, "trainable": "all", "lr": 2e-3, "batch_size": 8, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path) -> Path:
    """``gptclf train --multi-label`` on a CSV whose labels are 'a|b' strings."""
    import csv

    d = tmp_path_factory.mktemp("ml")
    texts, labels = keyword_rows(240)
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "tags"])
        w.writerows([t, "|".join(labs)] for t, labs in zip(texts, labels))
    r = gptclf.train(str(d / "train.csv"), label_column="tags", multi_label=True, model=str(tiny_gpt2),
                     out=str(d / "run"), **FAST)
    return Path(r)


@pytest.mark.slow
def test_a_tiny_model_learns_the_keywords(csv_run: Path) -> None:
    m = json.loads((csv_run / "metrics.json").read_text())
    cfg = json.loads((csv_run / "config.json").read_text())
    assert cfg["multi_label"] is True and cfg["labels"] == ["food", "sports", "tech"]
    # Chance (each label guessed at its 40 % base rate) is a micro-F1 near 0.4.
    assert m["test_micro_f1"] > 0.8, m["test_micro_f1"]
    rep = m["test_report"]
    assert set(rep["per_class"]) == {"food", "sports", "tech"} and "confusion_matrix" not in rep
    assert {"micro_f1", "macro_f1", "exact_match", "hamming_loss"} <= set(rep)
    assert m["test_accuracy"] == rep["exact_match"]
    # the thresholds were chosen on validation and are what config.json keeps
    assert cfg["thresholds"] == m["thresholds"] and set(cfg["thresholds"]) == set(cfg["labels"])
    assert "temperature" not in cfg and "calibration" not in m
    assert cfg["data"]["multi_label"] and cfg["train"]["multi_label"]
    first = json.loads((csv_run / "test.jsonl").read_text().splitlines()[0])
    assert isinstance(first["label"], list)  # the saved test split keeps the label sets
    assert "micro F1" in (csv_run / "report.html").read_text()
    assert m["best_epoch"] >= 1 and m["early_stopping"]["metric"] == "val_accuracy"  # micro-F1 in multi-label runs


@pytest.mark.slow
def test_prediction_uses_the_stored_thresholds(csv_run: Path, tmp_path: Path) -> None:
    clf = gptclf.Classifier.load(csv_run, device="cpu")
    texts, truth = keyword_rows(40, seed=9)  # texts the run never saw
    results = clf.predict(texts)
    th = json.loads((csv_run / "config.json").read_text())["thresholds"]
    for r in results:
        assert "label" not in r and set(r["scores"]) == {"food", "sports", "tech"}
        assert set(r["labels"]) == {lab for lab, p in r["scores"].items() if p >= th[lab]}
        assert [r["scores"][lab] for lab in r["labels"]] == sorted((r["scores"][lab] for lab in r["labels"]), reverse=True)
    assert sum(set(r["labels"]) == set(t) for r, t in zip(results, truth)) >= 28  # most label sets exactly right
    # move one threshold above every score: that label is never predicted
    with_food = [t for t, r in zip(texts, results) if "food" in r["labels"]]
    assert with_food
    copy = tmp_path / "run"
    shutil.copytree(csv_run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["thresholds"]["food"] = 0.999999
    (copy / "config.json").write_text(json.dumps(cfg))
    assert all("food" not in r["labels"] for r in gptclf.Classifier.load(copy, device="cpu").predict(with_food))


@pytest.mark.slow
def test_evaluate_reads_the_runs_own_label_sets(csv_run: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "evaluate", "--model", str(csv_run), "--device", "cpu",
                         "--report", str(tmp_path / "ev"))
    assert code == 0, err
    assert "micro F1:" in out and "exact match:" in out and "threshold" in out
    m = json.loads((csv_run / "metrics.json").read_text())
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["micro_f1"] == pytest.approx(m["test_micro_f1"], abs=1e-6)
    assert "Hamming loss" in (tmp_path / "ev" / "report.html").read_text()
    # a file with delimited strings and another delimiter
    (tmp_path / "e.csv").write_text("text,label\npizza goal,food;sports\nthe it,\n")
    code, out, err = cli(capsys, "evaluate", "--model", str(csv_run), "--device", "cpu", "--data",
                         str(tmp_path / "e.csv"), "--label-delimiter", ";", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 2
    (tmp_path / "u.csv").write_text("text,label\npizza,cars\n")
    code, out, err = cli(capsys, "evaluate", "--model", str(csv_run), "--device", "cpu", "--data", str(tmp_path / "u.csv"))
    assert code == 2 and "['cars'] are not among the model's labels" in err


@pytest.mark.slow
def test_dataframe_lists_with_the_trunk_cache_and_label_weights(tmp_path: Path, tiny_gpt2: Path) -> None:
    pd = pytest.importorskip("pandas")
    texts, labels = keyword_rows(160, seed=1)
    df = pd.DataFrame({"text": texts, "label": labels})
    run = Path(gptclf.train(df, multi_label=True, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                            **{**FAST, "trainable": "last_layer", "lr": 1e-2, "balance": "weight", "epochs": 2}))
    m = json.loads((run / "metrics.json").read_text())
    assert m["trunk_cache"] != "off" and m["test_report"]["multi_label"]
    assert json.loads((run / "config.json").read_text())["data"]["balance"] == "weight"


@pytest.mark.slow
def test_lora_multi_label(tmp_path: Path, tiny_gpt2: Path) -> None:
    texts, labels = keyword_rows(120, seed=2)
    run = Path(gptclf.train(texts=texts, labels=labels, multi_label=True, model=str(tiny_gpt2),
                            out=str(tmp_path / "run"), **{**FAST, "trainable": "lora", "epochs": 1}))
    clf = gptclf.Classifier.load(run, device="cpu")
    assert clf.multi_label and clf.predict(["pizza"])[0].keys() == {"labels", "scores", "truncated", "empty"}
