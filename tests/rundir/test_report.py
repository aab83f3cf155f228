"""The run report: metrics.json's per-split reports, report.html after training and after
``gptclf evaluate --report``, HTML escaping."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from gptclf.metrics import most_confident_mistakes
from gptclf.rundir.report import render_report, write_run_report


def test_metrics_json_has_a_full_report_per_split(tiny_run: Path) -> None:
    m = json.loads((tiny_run / "metrics.json").read_text())
    for split, n in (("train", m["n_train"]), ("val", m["n_val"]), ("test", m["n_test"])):
        rep = m[f"{split}_report"]
        assert rep["n"] == n and rep["labels"] == ["ham", "spam"]
        assert rep["accuracy"] == m[f"{split}_accuracy"]
        assert set(rep["per_class"]) == {"ham", "spam"}
        assert sum(map(sum, rep["confusion_matrix"])) == n
        assert 0.5 < rep["roc_auc"] <= 1.0  # binary task: ROC-AUC is there
    wrong = int(round((1 - m["test_accuracy"]) * m["n_test"]))
    mistakes = m["test_mistakes"]
    assert len(mistakes) == min(10, wrong)
    probs = [x["probability"] for x in mistakes]
    assert probs == sorted(probs, reverse=True) and all(p >= 0.5 for p in probs)
    assert all(x["true"] != x["predicted"] for x in mistakes)


def test_run_report_shows_metrics_curves_and_mistakes(tiny_run: Path) -> None:
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert f"gptclf run {tiny_run.name}" in page  # the run's name, not its temporary folder's
    assert f"{m['test_accuracy'] * 100:.2f} %" in page
    for section in ("Data", "Settings", "Metrics: train", "Metrics: validation", "Metrics: test",
                    "Most confident mistakes (test)"):
        assert f">{section}<" in page
    # loss, accuracy, confusion matrix, and the reliability diagram (calibration is on by default)
    assert page.count("data:image/png;base64,") == 4
    assert (tiny_run / "confusion-matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = m["test_mistakes"][0]
    import html

    assert html.escape(first["text"]) in page


def test_everything_from_data_is_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script> & <b>bold</b>'
    page = render_report("t <i>", data_summary={"source": evil}, settings={"<k>": "v"},
                         reports={"test": {"accuracy": 0.5, "n": 2, "macro_f1": 0.3, "labels": ["<a>", "b"],
                                           "per_class": {"<a>": {"precision": 1.0, "recall": 0.5, "f1": 0.6,
                                                                 "support": 2}},
                                           "confusion_matrix": [[1, 1], [0, 0]]}},
                         mistakes=[{"text": evil, "true": "<a>", "predicted": "b", "probability": 0.9}])
    assert "<script>" not in page and "<b>bold" not in page and "<i>" not in page and "<a>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page


def test_most_confident_mistakes_picks_the_surest_wrong_ones() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]])
    y = [1, 1, 1, 0, 0]
    got = most_confident_mistakes(["a", "b", "c", "d", "e"], y, probs, ["x", "y"], k=2)
    assert [(g["text"], g["true"], g["predicted"]) for g in got] == [("d", "x", "y"), ("a", "y", "x")]
    assert got[0]["probability"] == np.float32(0.95)


def test_evaluate_writes_a_report_for_any_labelled_file(tiny_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "labelled.csv"
    spammy = ("<script>alert(1)</script> WINNER!! You have been selected to receive a £900 prize reward! "
              "Call 09061701461 to claim")
    rows = [(spammy, "ham"), ("Ok lar... Joking wif u oni...", "spam"), ("Are we meeting for lunch?", "ham"),
            ("URGENT! You have won a 1 week FREE membership in our £100,000 prize Jackpot!", "ham")]
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "gptclf", "evaluate", "--model", str(tiny_run), "--data", str(data),
                        "--report", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == printed["n"] == 4 and saved["accuracy"] == printed["accuracy"]
    assert sorted(p.name for p in out.iterdir()) == ["confusion-matrix.png", "metrics.json", "report.html"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"{printed['accuracy'] * 100:.2f} %" in page and ">Most confident mistakes (evaluation data)<" in page
    wrong = saved["mistakes"]
    assert len(wrong) == round((1 - saved["accuracy"]) * 4)
    assert any(m["text"] == spammy for m in wrong)  # labelled ham, obviously spam
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The per-class table and the confusion matrix are in the page.
    cm = saved["confusion_matrix"]
    assert re.search(r"<td class=num>%d</td><td class=num>%d</td>" % tuple(cm[0]), page)


def test_report_can_be_redrawn_from_a_run_directory(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "report.html").unlink()
    (copy / "confusion-matrix.png").unlink()
    write_run_report(copy)
    assert (copy / "report.html").exists() and (copy / "confusion-matrix.png").exists()
