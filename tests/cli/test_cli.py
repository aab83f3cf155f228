"""End to end: the real CLI on the real SMS Spam Collection with a tiny GPT-2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import env_with


def gptclf(*args: str, env: dict | None = None, stdin: str | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptclf", *args], capture_output=True, text=True,
                          env=env, input=stdin, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tiny_run: Path, sms_file: Path) -> tuple[Path, dict]:
    return tiny_run, env_with(GPTCLF_SMS_SPAM=str(sms_file), HF_HUB_OFFLINE="1")


def test_train_writes_a_self_describing_run(trained: tuple[Path, dict]) -> None:
    run, _ = trained
    assert sorted(p.name for p in run.iterdir()) == [
        "accuracy-plot.png", "config.json", "confusion-matrix.png", "history.json", "loss-plot.png",
        "metrics.json", "model.safetensors", "reliability-diagram.png", "report.html",  # calibrated by default
        "test.jsonl"]
    assert (run.parent / "latest").resolve() == run.resolve()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["labels"] == ["ham", "spam"] and cfg["max_length"] == 256 and cfg["pad_id"] == 50256
    assert cfg["tokenizer"]["type"] == "tiktoken" and cfg["architecture"]["arch"] == "gpt2"
    m = json.loads((run / "metrics.json").read_text())
    assert (m["n_train"], m["n_val"], m["n_test"]) == (1045, 149, 300)
    # Well above chance (50 %) on the balanced test split.
    assert m["test_accuracy"] > 0.85 and m["val_accuracy"] > 0.85
    assert m["seconds"] > 0
    h = json.loads((run / "history.json").read_text())
    assert len(h["epochs"]) == 2 and h["steps"][0]["step"] == 0
    assert not list(run.parent.glob(".*tmp*")), "temporary files left behind"


def test_predict_arguments_stdin_and_json(trained: tuple[Path, dict]) -> None:
    run, env = trained
    r = gptclf("predict", "--model", str(run), "WINNER!! Claim your £1000 prize now. Call 09061701461 to claim",
               "Ok lar... Joking wif u oni...", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["spam", "ham"]
    r = gptclf("predict", "--model", str(run), "--json", env=env, stdin="first text\n\nsecond text\n")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == ["first text", "second text"]
    assert all(set(x) == {"text", "label", "score", "scores", "truncated", "empty"} and 0.5 <= x["score"] <= 1
               for x in rows)


def test_evaluate_prints_the_report(trained: tuple[Path, dict], tmp_path: Path) -> None:
    run, env = trained
    f = tmp_path / "mine.csv"
    f.write_text("message,category\nFree entry in 2 a wkly comp to win FA Cup final tkts,spam\n"
                 "I'll call you later,ham\n")
    r = gptclf("evaluate", "--model", str(run), "--data", str(f), "--text-column", "message",
               "--label-column", "category", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["n"] == 2 and set(rep["per_class"]) == {"ham", "spam"} and len(rep["confusion_matrix"]) == 2
    r = gptclf("evaluate", "--model", str(run), env=env)
    assert r.returncode == 0 and "precision" in r.stdout and "confusion matrix" in r.stdout
    m = json.loads((run / "metrics.json").read_text())
    assert f"accuracy: {m['test_accuracy'] * 100:.2f}%" in r.stdout  # same split, same number


def test_python_api(trained: tuple[Path, dict]) -> None:
    import gptclf as g

    run, _ = trained
    out = g.Classifier.load(run).predict(["Are we meeting for lunch?", "URGENT! You have won a prize"])
    assert [set(x) >= {"label", "score"} for x in out] == [True, True]


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "gpt5-tiny", "--init", "random"], "unknown model 'gpt5-tiny'"),
    (["train", "--data", "{missing}"], "no such file"),
    (["predict", "--model", "{missing}", "hi"], "does not exist"),
    (["train", "--data", "{badcols}", "--init", "random", "--model", "gpt2"], "no text column 'text'"),
])
def test_errors_are_one_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("msg,label\nhi,a\nho,b\n")
    args = [a.replace("{missing}", str(tmp_path / "nope")).replace("{badcols}", str(bad)) for a in args]
    r = gptclf(*args, env=env_with(HF_HUB_OFFLINE="1"))
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
