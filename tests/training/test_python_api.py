"""Issue 15, findings 3, 5, 6 and 12: ``gptclf.train`` any number of times, from a DataFrame or
lists; the default max length is the backbone's (capped), recorded, and every prediction says
whether its text was cut; the run keeps its test split, which ``gptclf evaluate`` uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gptclf
from gptclf.config import MAX_LENGTH_CAP

TOPICS = {"sports": ("match", "goal", "team", "league"), "cooking": ("oven", "recipe", "bake", "salt"),
          "tech": ("laptop", "python", "server", "chip")}


def _data() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for topic, words in TOPICS.items():
        for i in range(20):
            texts.append(f"{words[i % 4]} and {words[(i + 1) % 4]} story {i}")
            labels.append(topic)
    return texts, labels


FAST = {"epochs": 1, "trainable": "all", "lr": 1e-3, "batch_size": 8, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path) -> tuple[Path, Path]:
    pd = pytest.importorskip("pandas")
    out = tmp_path_factory.mktemp("api")
    texts, labels = _data()
    _ = gptclf.TrainConfig  # touching the lazy attribute first must not break train()
    df = pd.DataFrame({"body": texts, "topic": labels})
    a = gptclf.train(df, text_column="body", label_column="topic", model=str(tiny_gpt2), out=str(out / "a"), **FAST)
    b = gptclf.train(texts=texts, labels=labels, model=str(tiny_gpt2), out=str(out / "b"), **FAST)
    return Path(a), Path(b)


def test_train_twice_in_one_process_from_memory(api_runs: tuple[Path, Path]) -> None:
    for run in api_runs:
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["labels"] == ["cooking", "sports", "tech"]
        assert cfg["data"]["source"] == "in-memory (60 rows)" and cfg["train"]["data"] == "in-memory (60 rows)"
        assert cfg["data"]["n_train"] + cfg["data"]["n_val"] + cfg["data"]["n_test"] == 60  # nothing dropped
        assert cfg["data"]["test_counts"] == {"cooking": 4, "sports": 4, "tech": 4}  # stratified
        # The default max length: the tiny backbone's whole context (256 < the cap), not the longest text.
        assert cfg["max_length"] == min(256, MAX_LENGTH_CAP)
        assert {e["label"] for e in cfg["examples"]} == set(TOPICS)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in api_runs)
    assert a["test_accuracy"] == b["test_accuracy"]  # same data, same seed: the same run


def test_the_run_keeps_its_test_split(api_runs: tuple[Path, Path]) -> None:
    run = api_runs[0]
    rows = [json.loads(line) for line in (run / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    cfg = json.loads((run / "config.json").read_text())
    assert len(rows) == cfg["data"]["n_test"] and all(set(r) == {"text", "label"} for r in rows)


def test_evaluate_defaults_to_the_runs_own_test_data(api_runs: tuple[Path, Path]) -> None:
    run = api_runs[0]
    r = subprocess.run([sys.executable, "-m", "gptclf", "evaluate", "--model", str(run), "--json", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["n"] == 12 and report["labels"] == ["cooking", "sports", "tech"]
    assert "test.jsonl" in report["data"]
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_predictions_say_when_a_text_was_cut_or_empty(api_runs: tuple[Path, Path]) -> None:
    clf = gptclf.Classifier.load(api_runs[0], device="cpu")
    long_text = "python server laptop " * 200  # 600 tokens > 256
    with pytest.warns(UserWarning, match="truncated"):
        results = clf.predict(["oven recipe", long_text, "   "])
    assert [r["truncated"] for r in results] == [False, True, False]
    assert [r["empty"] for r in results] == [False, False, True]
    assert clf.truncated(["oven", long_text]) == [False, True]


def test_predict_input_marks_truncation_and_reads_txt_and_json(api_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = api_runs[0]
    long_text = "python server laptop " * 200
    src = tmp_path / "in.json"
    src.write_text(json.dumps([{"text": "bake the salt"}, {"text": long_text}]), encoding="utf-8")
    txt = tmp_path / "in.txt"
    txt.write_text("text,id\nbake the salt,1\n", encoding="utf-8")
    for inp, out in ((src, tmp_path / "out.jsonl"), (txt, tmp_path / "out.csv")):
        r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(run), "--input", str(inp),
                            "--output", str(out), "--device", "cpu", "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["truncated"] for row in rows] == [False, True]
    csv_text = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_text[0].endswith(",truncated") and csv_text[1].endswith(",false")
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(run), "--json", "--device", "cpu",
                        long_text], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)["truncated"] is True


def test_train_refuses_mixed_inputs() -> None:
    with pytest.raises(gptclf.GptclfError, match="texts= and labels= together"):
        gptclf.train(texts=["a"])
    with pytest.raises(gptclf.GptclfError, match="cannot be a"):
        gptclf.train(data=3.5)
