"""--long-text: windows, head-tail, the default choice, the window pool, and the key test: a label
decided only by the last words of ~300-token texts is at chance when truncated to 64 tokens and
learned when the texts are read whole in windows (a tiny GPT-2, one block frozen and cached)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import gptclf
from gptclf.data.encoding import encode_tokens
from gptclf.data.long_text import AUTO_CHUNK_SHARE, LongText, cap_windows, choose_mode, fit_texts, window_starts
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.models.classifier import WindowPool
from gptclf.training.trunk_cache import budget_slices

pytestmark = pytest.mark.usefixtures("one_thread")

FILLER = "the a we it of and to in is was for on that with as at by this from or".split()


def end_decided(n: int, seed: int = 0, words: int = 300) -> tuple[list[str], list[str]]:
    """Filler words, then 'verdict excellent' (pos) or 'verdict terrible' (neg): only the end says."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        lab = rng.choice(["pos", "neg"])
        texts.append(" ".join([rng.choice(FILLER) for _ in range(words)] +
                              ["verdict", "excellent" if lab == "pos" else "terrible"]))
        labels.append(lab)
    return texts, labels


# ------------------------------------------------------------------------------ units


def test_windows_cover_the_text_with_the_overlap_and_the_cap_keeps_both_ends() -> None:
    assert window_starts(10, 4, 1) == [0, 3, 6]  # the last ends at 10 exactly
    assert window_starts(11, 4, 1) == [0, 3, 6, 7]  # a last full window aligned to the end
    assert window_starts(3, 4, 1) == [0]
    assert cap_windows([0, 3, 6, 9, 12], 3) == [0, 3, 12]
    assert cap_windows([0, 3], 3) == [0, 3]
    ids = [list(range(11)), [1, 2]]
    f = fit_texts(ids, [100], [200], 6, LongText("chunk", stride=1), "t", say=None)
    assert f.offsets.tolist() == [0, 4, 5]
    assert f.rows[:2] == [[100, 0, 1, 2, 3, 200], [100, 3, 4, 5, 6, 200]] and f.rows[3] == [100, 7, 8, 9, 10, 200]
    assert f.truncated == [False, False]
    capped = fit_texts(ids, [], [], 4, LongText("chunk", stride=1, max_windows=2), "t", say=None)
    assert capped.rows[:2] == [[0, 1, 2, 3], [7, 8, 9, 10]] and capped.truncated == [True, False]
    with pytest.raises(GptclfError, match="--stride 4"):
        fit_texts(ids, [], [], 4, LongText("chunk", stride=4), "t", say=None)


def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters() -> None:
    f = fit_texts([list(range(20)), [7]], [], [99], 9, LongText("head-tail"), "t", say=None)
    assert f.rows == [[0, 1] + list(range(14, 20)) + [99], [7, 99]]  # room 8: head 2, tail 6
    assert f.truncated == [True, False] and f.offsets is None


def test_short_texts_are_fitted_exactly_as_before_in_every_mode() -> None:
    ids = [[5, 6, 7], [8]]
    plain = encode_tokens(ids, [1], [2], [0, 1], 16, 64, "t")
    assert plain.ids == [[1, 5, 6, 7, 2], [1, 8, 2]] and plain.offsets is None
    for mode in ("head-tail", "chunk"):
        other = encode_tokens(ids, [1], [2], [0, 1], 16, 64, "t", LongText(mode))
        assert other.ids == plain.ids and other.lengths.tolist() == plain.lengths.tolist()


def test_the_default_chunks_only_when_more_than_a_few_percent_would_be_cut() -> None:
    n = 100
    few = [[0] * 5] * (n - int(n * AUTO_CHUNK_SHARE)) + [[0] * 50] * int(n * AUTO_CHUNK_SHARE)
    mode, line = choose_mode(few, 10, None)
    assert mode == "truncate" and "--long-text chunk reads them" in line
    many = few[:-int(n * AUTO_CHUNK_SHARE) - 1] + [[0] * 50] * (int(n * AUTO_CHUNK_SHARE) + 1)
    assert choose_mode(many, 10, None)[0] == "chunk"
    assert choose_mode(many, 10, "head-tail")[0] == "head-tail"


@pytest.mark.parametrize("mode", ["attention", "max", "mean"])
def test_window_pool_of_one_window_is_that_window_and_texts_stay_apart(mode: str) -> None:
    torch.manual_seed(0)
    pool = WindowPool(8, mode)
    if mode == "attention":
        pool.query.data.normal_()
    v = torch.randn(6, 8)
    one = pool(v[:3], torch.tensor([1, 1, 1]))
    assert torch.equal(one, v[:3])
    together = pool(v, torch.tensor([2, 1, 3]))
    apart = torch.cat([pool(v[:2], torch.tensor([2])), pool(v[2:3], torch.tensor([1])), pool(v[3:], torch.tensor([3]))])
    torch.testing.assert_close(together, apart)


def test_budget_slices_keep_order_and_bound_padded_tokens() -> None:
    lengths = np.array([4, 4, 4, 2, 4, 4])
    parts = budget_slices(list(range(6)), lengths, 8)
    assert [list(p) for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert budget_slices([0], np.array([100]), 8) == [[0]]


# ------------------------------------------------------------------------------ the done-when test


def keyword_anywhere(n: int, seed: int = 0, words: int = 1000, first: int = 150) -> tuple[list[str], list[str]]:
    """~1,000-token texts of filler with one deciding word ('excellent': pos, 'terrible': neg) at a
    random place after the first ``first`` words, i.e. past the first 128-token window."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        lab = rng.choice(["pos", "neg"])
        text = [rng.choice(FILLER) for _ in range(words)]
        text.insert(rng.randint(first, words), "excellent" if lab == "pos" else "terrible")
        texts.append(" ".join(text))
        labels.append(lab)
    return texts, labels


@pytest.mark.slow
def test_done_when_a_word_past_the_first_window_decides(tiny_gpt2: Path, tmp_path: Path) -> None:
    """Issue 26's done-when: truncated to its first window (128 of ~1,000 tokens) the task is at
    chance; read whole in 9 windows it is learned. Measured (docs/long-texts.md): at 6 epochs max
    aggregation 100 %, attention and mean 57.5 % (chance: the attention pool starts as the mean,
    which dilutes the one window that holds the word among nine); attention reaches 100 % at 12."""
    texts, labels = keyword_anywhere(200)
    common = dict(texts=texts, labels=labels, model=str(tiny_gpt2), max_length=128, trainable="all", lr=3e-3,
                  eval_freq=1000, progress=False)
    runs = {"truncate": gptclf.train(long_text="truncate", epochs=6, out=str(tmp_path / "t"), **common),
            "max": gptclf.train(long_text="chunk", aggregation="max", epochs=6, out=str(tmp_path / "m"), **common),
            "attention": gptclf.train(long_text="chunk", epochs=12, out=str(tmp_path / "a"), **common)}
    acc = {k: json.loads((Path(r) / "metrics.json").read_text())["test_accuracy"] for k, r in runs.items()}
    # 40 test texts: at chance, 0.8 is 3.8 standard deviations above 0.5 (0.5 +- 0.079).
    assert acc["truncate"] <= 0.8
    assert acc["max"] >= 0.95 and acc["attention"] >= 0.95, acc
    lengths = json.loads((Path(runs["max"]) / "metrics.json").read_text())["text_lengths"]["test"]
    assert lengths["chunked"] == 40 and lengths["windows"] == 9 * 40


# ------------------------------------------------------------------------------ the key test


@pytest.fixture(scope="module")
def end_runs(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path) -> dict[str, Path]:
    texts, labels = end_decided(120)
    out = tmp_path_factory.mktemp("long")
    common = dict(model=str(tiny_gpt2), max_length=64, trainable="last_block", lr=2e-3, epochs=3,
                  eval_freq=1000, progress=False)
    return {"chunk": Path(gptclf.train(texts=texts, labels=labels, out=str(out / "chunk"), **common)),
            "truncate": Path(gptclf.train(texts=texts, labels=labels, long_text="truncate",
                                          out=str(out / "truncate"), **common))}


def test_chunk_reads_the_end_that_truncation_cuts_off(end_runs: dict[str, Path]) -> None:
    chunk = json.loads((end_runs["chunk"] / "metrics.json").read_text())
    cut = json.loads((end_runs["truncate"] / "metrics.json").read_text())
    # 24 test texts: at chance, 0.75 is 2.4 standard deviations above 0.5; the end decides every label.
    assert cut["test_accuracy"] <= 0.75
    assert chunk["test_accuracy"] >= 0.95
    # --long-text left out: every training text is longer than 64 tokens, so the run chose chunk.
    config = json.loads((end_runs["chunk"] / "config.json").read_text())
    assert config["long_text"] == {"mode": "chunk", "stride": None, "max_windows": 16, "aggregation": "attention"}
    assert config["train"]["long_text"] == "chunk"
    assert chunk["text_lengths"]["train"]["chunked"] == chunk["n_train"]
    assert "long_text" not in json.loads((end_runs["truncate"] / "config.json").read_text())
    page = (end_runs["chunk"] / "report.html").read_text()
    assert f"{chunk['n_train']} chunked into {6 * chunk['n_train']} windows" in page


def test_a_chunked_run_predicts_whole_texts_in_windows(end_runs: dict[str, Path]) -> None:
    clf = Classifier.load(end_runs["chunk"], device="cpu")
    texts, labels = end_decided(16, seed=7)
    preds = clf.predict(texts + ["verdict excellent"])
    assert [p["label"] for p in preds[:-1]] == labels
    assert all(p["windows"] == 6 and not p["truncated"] for p in preds[:-1])
    assert preds[-1]["windows"] == 1
    # the batching (rows, token budget) never changes a text's result
    full = clf.predict_proba(texts)
    clf.max_batch_tokens = 64
    np.testing.assert_allclose(clf.predict_proba(texts, batch_size=1), full, atol=1e-5)
    report = clf.evaluate(texts, labels)
    assert report["accuracy"] == 1.0
    fitted, flags = clf.encode_with_flags(texts[:2])
    np.testing.assert_allclose(clf.proba_from_ids(fitted), full[:2], atol=1e-5)
    with pytest.raises(GptclfError, match="windows"):
        clf.proba_from_ids(clf.encode(texts[:2]))


def test_past_max_windows_a_text_is_truncated(end_runs: dict[str, Path]) -> None:
    clf = Classifier.load(end_runs["chunk"], device="cpu")
    long = " ".join(["the"] * 2000) + " verdict terrible"
    p = clf.predict([long])[0]
    assert p["windows"] == 16 and p["truncated"] and p["label"] == "neg"  # the last window is kept
    assert clf.longest_text == 64 + 15 * (64 - 8)


def test_serve_onnx_and_hf_export_of_a_chunked_run(end_runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gptclf.inference.serve.app import create_app
    from gptclf.rundir.hf_export import export_hf

    clf = Classifier.load(end_runs["chunk"], device="cpu")
    texts, labels = end_decided(4, seed=3)
    with TestClient(create_app(clf)) as client:
        info = client.get("/v1/model").json()
        assert info["long_text"] == "chunk" and info["longest_text"] == clf.longest_text
        results = client.post("/v1/classify", json={"texts": texts}).json()["results"]
    assert [r["label"] for r in results] == labels and all(r["windows"] == 6 for r in results)
    with pytest.raises(GptclfError, match="windows"):
        export_hf(end_runs["chunk"], tmp_path / "hf")
    pytest.importorskip("onnxruntime")
    ort = Classifier.load(end_runs["chunk"], backend="onnxruntime")
    np.testing.assert_allclose(ort.predict_proba(texts), clf.predict_proba(texts), atol=1e-4)
    assert [p["windows"] for p in ort.predict(texts)] == [6] * 4


def test_predict_file_and_evaluate_cli_of_a_chunked_run(end_runs: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from helpers import cli

    texts, labels = end_decided(6, seed=5)
    src = tmp_path / "in.csv"
    src.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels)))
    code, out, err = cli(capsys, "predict", "--model", str(end_runs["chunk"]), "--input", str(src),
                         "--output", str(tmp_path / "out.csv"))
    assert code == 0, err
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].endswith(",truncated,windows") and all(x.endswith(",false,6") for x in lines[1:])
    assert [x.split(",")[2] for x in lines[1:]] == labels
    code, out, err = cli(capsys, "evaluate", "--model", str(end_runs["chunk"]), "--data", str(src), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 1.0
    code, out, err = cli(capsys, "predict", "--model", str(end_runs["chunk"]), "--json", texts[0])
    assert json.loads(out)["windows"] == 6


def test_multi_label_lora_chunked_run_saves_and_loads_its_window_pool(tiny_gpt2: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    texts, labels = end_decided(40, seed=2, words=150)
    sets = [[lab] + (["long"] if i % 3 == 0 else []) for i, lab in enumerate(labels)]
    run = Path(gptclf.train(texts=texts, labels=sets, multi_label=True, model=str(tiny_gpt2), trainable="lora",
                            max_length=64, long_text="chunk", aggregation="max", stride=16, epochs=1,
                            eval_freq=1000, progress=False, out=str(tmp_path / "run")))
    config = json.loads((run / "config.json").read_text())
    assert config["long_text"]["aggregation"] == "max" and config["long_text"]["stride"] == 16
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert any(k.startswith("out_head.") for k in f.keys())
    clf = Classifier.load(run, device="cpu")
    p = clf.predict(texts[:2])
    assert all("labels" in x and x["windows"] == 3 for x in p)  # 152 tokens, room 64, step 48: 0, 48, 88


def test_attention_pool_is_saved_with_a_trained_only_run(end_runs: dict[str, Path]) -> None:
    from safetensors import safe_open

    with safe_open(str(end_runs["chunk"] / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        query = f.get_tensor("window_pool.query")
    assert "out_head.weight" in keys and query.abs().sum() > 0  # it trained away from the mean
    clf = Classifier.load(end_runs["chunk"], device="cpu")
    assert torch.equal(clf.model.backbone.window_pool.query, query)


def test_tune_searches_long_text_when_the_texts_are_long(tiny_gpt2: Path, tmp_path: Path) -> None:
    """Every training text is longer than one window: gptclf tune tries the default recipe in chunk
    (the run's own mode, first) and truncate; each candidate is the standalone run of its mode, the
    winner (chunk: the end decides) is saved in its mode, and metrics.json records the search."""
    from gptclf.config import TrainConfig, TuneOptions
    from gptclf.training.tune import run_tune

    texts, labels = end_decided(120, seed=4, words=150)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels)))
    common = dict(model=str(tiny_gpt2), data=str(data), max_length=64, epochs=3, eval_freq=1000,
                  trainable="last_block", lr=2e-3, progress=False)
    lines: list[str] = []
    out = run_tune(TrainConfig(out=str(tmp_path / "run"), **common),
                   TuneOptions(trainables="1", lrs="2e-3", poolings="last-nonpad"), log=lines.append)
    m = json.loads((out / "metrics.json").read_text())
    assert [r["long_text"] for r in m["search"]] == ["chunk", "truncate"]
    search = m["long_text_search"]
    assert search["searched"] and search["modes"] == ["chunk", "truncate"] and search["window"] == 64
    assert search["longer_than_window"] == search["texts"] == m["n_train"]
    assert m["search_winner"] == {"trainable": "last_block", "lr": 2e-3, "pooling": "last-nonpad", "long_text": "chunk"}
    cut = m["search"][1]
    assert cut["val_accuracy"] < m["search"][0]["val_accuracy"]
    alone = json.loads((Path(gptclf.train(long_text="truncate", out=str(tmp_path / "t"), **common))
                        / "metrics.json").read_text())
    best = alone["val_curve"][cut["best_epoch"] - 1]  # the candidate's best epoch, in the standalone run
    assert best["val_accuracy"] == cut["val_accuracy"]
    assert best["val_loss"] == pytest.approx(cut["val_loss"], abs=1e-6)
    assert json.loads((out / "config.json").read_text())["long_text"]["mode"] == "chunk"
    assert Classifier.load(out, device="cpu").predict(texts[:1])[0]["windows"] == 3
    assert any("searching --long-text chunk, truncate" in line for line in lines)
    assert any("long-text" in line and "truncate" in line for line in lines[-4:])  # the terminal table's column
    assert "long_text" in (out / "report.html").read_text()


def test_a_chunked_run_interrupted_after_one_epoch_resumes_to_the_same_run(tiny_gpt2: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash right after the epoch-1 checkpoint of a chunked run (cached windows, a trained attention
    pool), resume: the weights (the pool's query too), metrics and history equal an uninterrupted run's."""
    from safetensors.torch import load_file

    from gptclf.training import state as checkpoint
    from gptclf.training.recipe import resume_training

    texts, labels = end_decided(60, seed=8, words=150)
    data = tmp_path / "long.csv"  # a file: a resumed run reads its data again
    data.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels)))
    opts = dict(data=str(data), model=str(tiny_gpt2), max_length=64, long_text="chunk",
                trainable="last_block", lr=2e-3, epochs=2, eval_freq=3, checkpoint_every=10**6, progress=False)
    reference = Path(gptclf.train(out=str(tmp_path / "ref"), **opts))
    real_save, saves = checkpoint.Checkpointer.save, []

    def crash_after_first_epoch(self, tensors, state):  # noqa: ANN001
        real_save(self, tensors, state)
        saves.append((state["epoch"], state["batch"], sorted(tensors)))
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", crash_after_first_epoch)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        gptclf.train(out=str(out), **opts)
    assert len(saves) == 1 and saves[0][:2] == (1, 0)  # the only checkpoint: the end of epoch 1
    assert any("window_pool.query" in k for k in saves[0][2])
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    resume_training(out, log=lambda s: None, progress=False)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (out, reference))
    assert a["resumed_at_step"] > 0 and a["text_lengths"] == b["text_lengths"]
    for k in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss"):
        assert a[k] == b[k], k
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert wa.keys() == wb.keys() and "window_pool.query" in wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha, hb = (json.loads((r / "history.json").read_text()) for r in (out, reference))
    assert [(e["step"], e["val_loss"]) for e in ha["steps"]] == [(e["step"], e["val_loss"]) for e in hb["steps"]]
    assert json.loads((out / "config.json").read_text())["long_text"] == \
        json.loads((reference / "config.json").read_text())["long_text"]
