"""Training: the trunk cache is exact, seeds reproduce, the reference path, templates, recipes, pad multiples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training

from helpers import SCRIPTS


def _train(tmp_path: Path, name: str, model_dir: Path, **kw) -> Path:
    opts = dict(model=str(model_dir), init="random", epochs=1, eval_freq=40, out=str(tmp_path / name),
                progress=False, lr=1e-3)
    opts.update(kw)
    return run_training(TrainConfig(**opts), log=lambda s: None)


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        x, y = wa[k], wb[k]
        if k.endswith("att.qkv.bias"):
            # The key bias has an exactly-zero gradient (it shifts every attention score of a
            # query equally), so its "gradient" is rounding noise that AdamW normalises into
            # lr-sized steps in both runs. Compare the query and value biases only.
            d = x.numel() // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        assert torch.allclose(x, y, atol=atol, rtol=0), k


@pytest.mark.parametrize("trainable", ["last_block", "last_layer"])
def test_trunk_cache_is_exact(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path, trainable: str) -> None:
    a = _train(tmp_path, "cached", tiny_gpt2_config, cache="ram", trainable=trainable)
    b = _train(tmp_path, "plain", tiny_gpt2_config, cache="off", trainable=trainable)
    _assert_same_weights(a, b, atol=2e-6)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["trunk_cache"] == "ram" and mb["trunk_cache"] == "off"
    assert ma["test_accuracy"] == mb["test_accuracy"]
    assert abs(ma["test_loss"] - mb["test_loss"]) < 1e-5


def test_disk_cache_is_exact_too(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path) -> None:
    a = _train(tmp_path, "disk", tiny_gpt2_config, cache="disk", epochs=1)
    b = _train(tmp_path, "ram", tiny_gpt2_config, cache="ram", epochs=1)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["trunk_cache"] == "disk"
    assert ma["test_loss"] == pytest.approx(mb["test_loss"], abs=1e-6)


def test_same_seed_same_metrics(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path) -> None:
    a = _train(tmp_path, "a", tiny_gpt2_config)
    b = _train(tmp_path, "b", tiny_gpt2_config)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for k in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss"):
        assert ma[k] == mb[k], k
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert ha["steps"] == hb["steps"]
    timing = {"seconds", "examples_per_second"}
    assert [{k: v for k, v in e.items() if k not in timing} for e in ha["epochs"]] == \
        [{k: v for k, v in e.items() if k not in timing} for e in hb["epochs"]]


def test_reference_mode_is_the_books_path(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path) -> None:
    r = _train(tmp_path, "ref", tiny_gpt2_config, reference=True)
    cfg = json.loads((r / "config.json").read_text())
    m = json.loads((r / "metrics.json").read_text())
    assert (cfg["pooling"], cfg["padding"], m["trunk_cache"]) == ("last", "longest", "off")
    assert cfg["max_length"] == 120  # the longest training text, as in the book
    # Predictions from the saved directory pad to 120 and read position -1, like training did.
    clf = Classifier.load(r)
    assert clf.pad_to == 120


def test_last_pooling_needs_fixed_padding() -> None:
    with pytest.raises(GptclfError, match="position -1"):
        TrainConfig(pooling="last").resolved()


def test_template_is_saved_and_used_at_prediction(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path) -> None:
    from gptclf.inference.classifier import Classifier

    template = "SMS: {text}\nSpam?"
    run = _train(tmp_path, "tpl", tiny_gpt2_config, template=template, eval_freq=1000)
    clf = Classifier.load(run)
    assert clf.config["template"] == template
    pre, post = clf.tokenizer.encode("SMS: "), clf.tokenizer.encode("\nSpam?")
    ids = clf.encode(["hello there"])[0]
    assert ids == pre + clf.tokenizer.encode("hello there") + post
    # The model sees the wrapped text: its probabilities differ from those of the bare text.
    from gptclf.data.batching import collate

    bare, lens = collate([clf.tokenizer.encode("hello there")], clf.tokenizer.pad_id)
    with torch.inference_mode():
        p_bare = torch.softmax(clf.model(bare, lens), -1)[0].numpy()
    assert not np.allclose(clf.predict_proba(["hello there"])[0], p_bare, atol=1e-6)


def test_backbone_recipe_fills_only_what_is_not_given() -> None:
    from gptclf.config import BOOK_RECIPE, recipe_for

    book = TrainConfig().resolved()
    assert (book.trainable, book.lr) == (BOOK_RECIPE["trainable"], BOOK_RECIPE["lr"]) == ("last_block", 5e-5)
    smol = TrainConfig(model="smollm2-135m").resolved()
    assert (smol.trainable, smol.lr) == (recipe_for("smollm2-135m")["trainable"], recipe_for("smollm2-135m")["lr"])
    assert (smol.trainable, smol.lr) != ("last_block", 5e-5)
    mine = TrainConfig(model="smollm2-135m", trainable="all", lr=1e-5).resolved()
    assert (mine.trainable, mine.lr) == ("all", 1e-5)
    # A file path gets the book's recipe: the recipe belongs to a named backbone.
    assert TrainConfig(model="/some/dir").resolved().lr == 5e-5


def test_seed_spread_reproduces_the_train_run(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path) -> None:
    """scripts/seed_spread.py: its run for the split's own seed is gptclf train's run, exactly;
    another seed changes the head and batch order only (same split sizes), and the summary adds up."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "seed_spread", SCRIPTS / "seed_spread.py")
    seed_spread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed_spread)
    run = _train(tmp_path, "run", tiny_gpt2_config, trainable="last_block")
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = TrainConfig(model=str(tiny_gpt2_config), init="random", epochs=1, eval_freq=40, progress=False, lr=1e-3,
                      trainable="last_block")
    summary = seed_spread.spread(cfg, [123, 7], log=lambda s: None)
    first, other = summary["runs"]
    for split in ("train", "val", "test"):
        assert first[f"{split}_accuracy"] == metrics[f"{split}_accuracy"], split
    assert len(first["test_wrong"]) == round((1 - metrics["test_accuracy"]) * metrics["n_test"])
    accs = [first["test_accuracy"], other["test_accuracy"]]
    assert summary["test"]["mean"] == pytest.approx(sum(accs) / 2)
    assert summary["test"]["min"] == min(accs) and summary["test"]["max"] == max(accs)
    assert sum(w["seeds"] for w in summary["test_wrong_counts"]) == len(first["test_wrong"]) + len(other["test_wrong"])
    # The other seed really trained differently (a different head init and batch order).
    assert first["test_wrong"] != other["test_wrong"] or first["train_accuracy"] != other["train_accuracy"]

    with pytest.raises(GptclfError, match="book's own loop"):
        seed_spread.spread(TrainConfig(model=str(tiny_gpt2_config), init="random", reference=True), [1])

    # A sweep: one load for several recipes, cached or not; each summary lands in the JSONL
    # as it finishes, and a recipe equal to the one above gives the same accuracies.
    recipes = tmp_path / "recipes.txt"
    recipes.write_text("# comment line\n--trainable last_block\n\n--trainable all --lr 1e-4  # no cache\n"
                       "--trainable lora --lora-rank 2\n")
    jsonl = tmp_path / "sweep.jsonl"
    base = ["--model", str(tiny_gpt2_config), "--init", "random", "--epochs", "1", "--eval-freq", "40", "--lr", "1e-3",
            "--quiet"]
    done = seed_spread.sweep(base, seed_spread.read_recipes(recipes), [123], log=lambda s: None, jsonl=jsonl)
    assert [d["recipe"] for d in done] == ["--trainable last_block", "--trainable all --lr 1e-4",
                                           "--trainable lora --lora-rank 2"]
    assert all("error" not in d for d in done)
    assert [json.loads(line)["recipe"] for line in jsonl.read_text().splitlines()] == [d["recipe"] for d in done]
    for split in ("train", "val", "test"):
        assert done[0]["runs"][0][f"{split}_accuracy"] == metrics[f"{split}_accuracy"], split
    assert done[1]["config"]["trainable"] == "all" and done[2]["config"]["trainable"] == "lora"
    with pytest.raises(GptclfError, match="one model"):
        seed_spread.sweep(base, [["--model", "gpt2-small"], []], [1], log=lambda s: None)


@pytest.mark.parametrize("opts", [{"cache": "ram"}, {"cache": "off"},
                                  {"cache": "ram", "padding": "longest", "pooling": "last"}])
def test_padding_to_a_multiple_changes_no_result(tmp_path: Path, sms_env: Path, tiny_gpt2_config: Path,
                                                 monkeypatch: pytest.MonkeyPatch, opts: dict) -> None:
    """On a GPU each dynamic batch is padded up to a multiple of 16 tokens (fewer kernel shapes,
    a 4x faster first epoch on an H200). The run must not change: padding is masked, pooling
    reads real tokens, and a fixed --padding longest width (position -1) is kept as it is."""
    from gptclf.data.batching import collate
    from gptclf.device import pad_multiple

    monkeypatch.delenv("GPTCLF_PAD_MULTIPLE", raising=False)
    assert pad_multiple(torch.device("cuda")) == 16 and pad_multiple(torch.device("cpu")) == 1
    ids, lengths = collate([[5, 6, 7], [8]], pad_id=0, multiple=16)
    assert ids.shape == (2, 16) and lengths.tolist() == [3, 1] and ids[1, 1:].eq(0).all()
    assert collate([[5, 6, 7]], pad_id=0, pad_to=20, multiple=16)[0].shape == (1, 20)

    monkeypatch.setenv("GPTCLF_PAD_MULTIPLE", "1")
    a = _train(tmp_path, "plain", tiny_gpt2_config, **opts)
    monkeypatch.setenv("GPTCLF_PAD_MULTIPLE", "16")
    b = _train(tmp_path, "rounded", tiny_gpt2_config, **opts)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for split in ("train", "val", "test"):
        assert ma[f"{split}_accuracy"] == mb[f"{split}_accuracy"], split
    _assert_same_weights(a, b, atol=2e-6)

    monkeypatch.setenv("GPTCLF_PAD_MULTIPLE", "0")
    with pytest.raises(GptclfError, match="at least 1"):
        pad_multiple(torch.device("cpu"))
