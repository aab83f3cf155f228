"""gptclf predict --input/--output: CSV / TSV / JSONL in, one row out per row in, in order,
columns kept, read in chunks, written atomically."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gptclf.data.tables import Table
from gptclf.inference.batch_files import iter_chunks, predict_file
from gptclf.errors import GptclfError

TEXTS = ["WINNER!! You have won a £1000 prize. Call 09061701461 now to claim",
         "Ok lar... Joking wif u oni...", "", "Are we meeting for lunch?",
         'She said "hi, there"\nand left', "URGENT! Your mobile won a bonus caller prize"]


class Spy:
    """The real classifier, recording the size of every call (one call per chunk)."""

    def __init__(self, clf: Any) -> None:
        self.clf, self.labels, self.max_length = clf, clf.labels, clf.max_length
        self.calls: list[int] = []

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(len(texts))
        return self.clf.predict_proba(texts, batch_size)


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path, delimiter: str = ",") -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_every_row_in_order_with_columns_kept(tiny_classifier: Any, tmp_path: Path, fmt: str) -> None:
    rows = [{"id": str(i), "text": t, "note": f"n{i}"} for i, t in enumerate(TEXTS * 5)]
    src, dst = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        write_csv(src, rows, "\t" if fmt == "tsv" else ",")
    spy = Spy(tiny_classifier)
    res = predict_file(spy, src, dst, chunk_size=7)
    if fmt == "jsonl":
        out = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
    else:
        out = read_csv(dst, "\t" if fmt == "tsv" else ",")
        assert list(out[0]) == ["id", "text", "note", "predicted_label", "predicted_score", "p_ham", "p_spam",
                               "truncated"]
    assert res.rows == len(rows) == len(out) and res.chunks == 5
    assert spy.calls == [7, 7, 7, 7, 2]  # never more than a chunk at once
    assert [(o["id"], o["text"], o["note"]) for o in out] == [(r["id"], r["text"], r["note"]) for r in rows]
    want = tiny_classifier.predict([r["text"] for r in rows])
    for o, w in zip(out, want):
        assert o["predicted_label"] == w["label"]
        assert float(o["predicted_score"]) == pytest.approx(w["score"], abs=1e-5)
        assert float(o["p_ham"]) + float(o["p_spam"]) == pytest.approx(1.0, abs=1e-5)
    assert out[0]["predicted_label"] == "spam" and out[1]["predicted_label"] == "ham"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])


def test_reader_is_lazy(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    rows = [{"text": f"message number {i} " + "x" * 40} for i in range(3000)]
    write_csv(src, rows)
    with open(src, "a", encoding="utf-8") as f:
        f.write("extra,fields,here\n")  # malformed (3 fields, the header has 1), at the very end
    seen = 0

    def count(n: int) -> None:
        nonlocal seen
        seen += n

    with Table(src, on_bytes=count) as table:
        chunks = iter_chunks(table, 10)
        first = next(chunks)
        # One chunk read: a small fraction of the file, and the broken end not reached yet.
        assert len(first) == 10 and first[0].record["text"].startswith("message number 0 ")
        assert seen < src.stat().st_size / 50
        with pytest.raises(GptclfError, match=r"big.csv:3002: 3 fields"):
            for _ in chunks:
                pass


def test_error_leaves_no_partial_output(tiny_classifier: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text,x\n" + "".join(f"hello {i},{i}\n" for i in range(50)) + "bad row,1,2\n")
    dst = tmp_path / "out.csv"
    dst.write_text("previous results\n")
    with pytest.raises(GptclfError, match=r"in.csv:52: 3 fields, the header has 2"):
        predict_file(tiny_classifier, src, dst, chunk_size=8)
    assert dst.read_text() == "previous results\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temp file left


@pytest.mark.parametrize("content,name,message", [
    ("msg,label\nhi,a\n", "in.csv", r"no text column 'text'; the columns are \['msg', 'label'\]"),
    ("hello\n", "in.xlsx", "unknown input format '.xlsx'"),
    ('{"text": "a"}\n[1]\n', "in.jsonl", "in.jsonl:2: expected a JSON object"),
    ("", "in.csv", "is empty"),
    ("text,predicted_label\na,b\n", "in.csv", r"already has column\(s\) \['predicted_label'\]"),
])
def test_clear_errors(tiny_classifier: Any, tmp_path: Path, content: str, name: str, message: str) -> None:
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(GptclfError, match=message):
        predict_file(tiny_classifier, src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_cli_predict_file_and_old_forms(tiny_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "msgs.csv"
    write_csv(src, [{"message": t} for t in TEXTS])
    dst = tmp_path / "scored.jsonl"
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(tiny_run), "--input", str(src),
                        "--output", str(dst), "--text-column", "message", "--chunk-size", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
    assert [o["message"] for o in out] == TEXTS and {"predicted_label", "p_spam"} <= set(out[0])
    assert f"wrote {len(TEXTS)} rows" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(tiny_run), "--input",
                        str(tmp_path / "missing.csv"), "--output", str(dst)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "missing.csv: no such file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(tiny_run), "--input", str(src),
                        "--output", str(dst)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no text column 'text'" in r.stderr and "'message'" in r.stderr
    # The positional and --file forms still work.
    lines = tmp_path / "lines.txt"
    lines.write_text("first text\nsecond text\n")
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(tiny_run), "--file", str(lines)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
