"""gptclf audit: the flip experiment in small (a tiny GPT-2, data whose label a keyword decides,
some labels flipped: the flipped rows rank first), duplicates and train/test leaks, multi-label,
every column of audit.csv, the clear errors, and train --drop-label-issues (and its refusal of an
audit of other rows)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cleanlab")
import pandas as pd  # noqa: E402

import gptclf  # noqa: E402
from gptclf.auditing.report import COLUMNS  # noqa: E402
from gptclf.cli import main  # noqa: E402
from helpers import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FILLER = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
KEYWORD = {"a": "zebra", "b": "castle"}
# A linear head on the tiny model's mean-pooled (random) embeddings learns the keyword in a few epochs.
RECIPE = ["--trainable", "last_layer", "--pooling", "mean", "--lr", "1e-2", "--eval-freq", "1000", "--quiet"]
N, FLIPS = 240, 12


def keyword_rows(n: int, seed: int, words: tuple[int, int] = (3, 6)) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "ab"[i % 2]
        text = [rng.choice(FILLER) for _ in range(rng.randint(*words))]
        text.insert(rng.randint(0, len(text)), KEYWORD[label])
        rows.append({"text": " ".join(text), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path) -> dict:
    """240 keyword rows with 12 labels flipped (seed 0), a copy of row 3 and an empty text, audited
    by the CLI with 5 folds of 6 epochs."""
    d = tmp_path_factory.mktemp("audit-flip")
    rows = keyword_rows(N, 0)
    flips = sorted(random.Random(0).sample(range(N), FLIPS))
    for i in flips:
        rows[i]["label"] = "b" if rows[i]["label"] == "a" else "a"
    rows += [dict(rows[3]), {"text": "", "label": "a"}]
    data = write_jsonl(d / "kw.jsonl", rows)
    code = main(["audit", "--model", str(tiny_gpt2), "--data", str(data), "--epochs", "6", *RECIPE,
                 "--out", str(d / "audit")])
    assert code == 0
    return {"dir": d / "audit", "data": data, "rows": rows, "flips": flips, "model": tiny_gpt2,
            "df": read_audit(d / "audit" / "audit.csv")}


def read_audit(path: Path) -> pd.DataFrame:
    """audit.csv as a person reads it with pandas: blank cells of the text columns are empty strings."""
    df = pd.read_csv(path, dtype={"duplicate_of": str, "fold": str})
    text = ["text", "label", "suggested_label", "issue", "issues", "flagged_labels", "duplicate_of", "fold"]
    return df.fillna({c: "" for c in text})


def test_flipped_rows_rank_first(flipped: dict) -> None:
    rank = list(flipped["df"]["row"])
    top_k, top_2k = set(rank[:FLIPS]), set(rank[:2 * FLIPS])
    assert len(top_k & set(flipped["flips"])) >= 0.8 * FLIPS  # the issue's targets, in small
    assert set(flipped["flips"]) <= top_2k
    flagged = flipped["df"][flipped["df"]["issue"] == "label"]
    assert len(set(flagged["row"]) & set(flipped["flips"])) >= 0.8 * FLIPS
    for r in flagged.itertuples():  # a two-class keyword set: the suggestion is the other label
        assert r.suggested_label != r.label


def test_every_column_of_audit_csv(flipped: dict) -> None:
    df, rows = flipped["df"], flipped["rows"]
    assert tuple(df.columns) == COLUMNS
    assert sorted(df["row"]) == list(range(len(rows)))  # every input row once, by its 0-based position
    by_row = df.set_index("row")
    for i in (0, 7, N - 1):
        assert by_row.loc[i, "text"] == rows[i]["text"] and by_row.loc[i, "label"] == rows[i]["label"]
    filled = df[df["issue"] != "empty"]
    assert filled["label_quality"].between(0, 1).all() and set(filled["suggested_label"]) <= {"a", "b"}
    assert set(df["issue"]) <= {"", "label", "duplicate", "leak", "outlier", "empty"}
    assert all(i.split(";")[0] == p for i, p in zip(df["issues"], df["issue"]))
    empty = by_row.loc[N + 1]
    assert empty["issue"] == "empty" and np.isnan(empty["label_quality"]) and empty["fold"] == ""
    assert set(filled["fold"].astype(int)) == {1, 2, 3, 4, 5}
    assert set(df["file"]) == {"data"} and set(df["split"]) <= {"train", "val", "test", "unused"}
    # Most suspicious first: the label issues, lowest quality first, then the rest by quality.
    n_label = int((df["issue"] == "label").sum())
    assert (df["issue"][:n_label] == "label").all() and df["label_quality"][:n_label].is_monotonic_increasing
    assert df["label_quality"][n_label:].dropna().is_monotonic_increasing
    copy = by_row.loc[N]  # the copy of row 3: a leak when it lands in val/test and row 3 in train
    expect = "leak" if copy["split"] in ("val", "test") and by_row.loc[3, "split"] == "train" else "duplicate"
    assert expect in copy["issues"].split(";") and str(copy["duplicate_of"]) == "3" and copy["similarity"] == 1.0
    assert (df["outlier_score"].dropna().between(0, 1)).all()
    record = json.loads((flipped["dir"] / "audit.json").read_text())
    assert record["files"]["data"]["rows"] == len(rows) and record["counts"]["empty"] == 1
    assert record["counts"]["label"] == n_label and len(record["folds"]) == 5
    page = (flipped["dir"] / "report.html").read_text()
    assert "given \\ suggested" in page and "Most suspicious rows" in page and f"{n_label}</td>" in page


def test_duplicates_and_leaks(tmp_path: Path, tiny_gpt2: Path) -> None:
    """With --val and --test files every data row trains: a test row that repeats one (case and
    spaces aside) or nearly repeats one is a leak; a data row repeating an earlier one a duplicate."""
    data, val, test = keyword_rows(100, 1, (5, 9)), keyword_rows(20, 2, (5, 9)), keyword_rows(20, 3, (5, 9))
    data[50] = dict(data[10])
    test[0] = {"text": "  " + data[7]["text"].upper() + " ", "label": data[7]["label"]}
    test[1] = {"text": data[9]["text"] + " the", "label": data[9]["label"]}
    paths = [write_jsonl(tmp_path / f"{n}.jsonl", r) for n, r in (("d", data), ("v", val), ("t", test))]
    # The tiny random model's vectors are coarse: the near copy has cosine 0.92 with its original,
    # no two unrelated rows more than 0.83 (measured at seed 0), so 0.88 lies between them.
    df = gptclf.audit(str(paths[0]), val=str(paths[1]), test=str(paths[2]), model=str(tiny_gpt2),
                      trainable="last_layer", pooling="mean", lr=1e-2, epochs=1, similarity=0.88, progress=False)
    found = {(r.file, r.row): (r.issues, r.duplicate_of) for r in df.itertuples() if r.duplicate_of}
    assert found == {("data", 50): ("duplicate", "10"), ("test", 0): (found[("test", 0)][0], "7"),
                     ("test", 1): (found[("test", 1)][0], "9")}
    assert all("leak" in found[("test", i)][0].split(";") for i in (0, 1))
    assert df.set_index(["file", "row"]).loc[("test", 0), "similarity"] == 1.0
    assert 0.88 <= df.set_index(["file", "row"]).loc[("test", 1), "similarity"] < 1.0


def test_multi_label_names_the_wrong_label(tmp_path: Path, tiny_gpt2: Path) -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(240):
        labels = [lab for lab in ("x", "y") if rng.random() < 0.5]
        text = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for lab in labels:
            text.insert(rng.randint(0, len(text)), {"x": "zebra", "y": "castle"}[lab])
        rows.append({"text": " ".join(text), "label": labels})
    flips = rng.sample(range(240), 10)
    for i in flips:  # label y added where its keyword is missing, or removed where it is there
        rows[i]["label"] = sorted(set(rows[i]["label"]) ^ {"y"})
    path = write_jsonl(tmp_path / "ml.jsonl", rows)
    df = gptclf.audit(str(path), multi_label=True, model=str(tiny_gpt2), trainable="last_layer", pooling="mean",
                      lr=1e-2, epochs=6, progress=False)
    flipped = df[df["row"].isin(flips)]
    assert sum("y" in f.split("|") for f in flipped["flagged_labels"]) >= 8
    assert len(set(df["row"][:20]) & set(flips)) >= 8
    one = df.set_index("row").loc[flips[0]]
    assert one["label"] == "|".join(rows[flips[0]]["label"])  # label sets joined by --label-delimiter
    assert set("|".join(df["suggested_label"]).split("|")) <= {"x", "y", ""}


def test_python_api_returns_a_dataframe_and_can_be_called_again(tiny_gpt2: Path) -> None:
    rows = keyword_rows(40, 4)
    for _ in range(2):  # the second call must find gptclf.audit still the function
        df = gptclf.audit(texts=[r["text"] for r in rows], labels=[r["label"] for r in rows], model=str(tiny_gpt2),
                          folds=2, audit_epochs=1, batch_size=4, trainable="last_layer", progress=False)
        assert isinstance(df, pd.DataFrame) and tuple(df.columns) == COLUMNS and len(df) == 40


@pytest.mark.parametrize("rows, folds, message", [
    ([{"text": f"text {i}", "label": "a"} for i in range(30)], 5, "only one class ('a')"),
    ([{"text": f"text {i}", "label": "ab"[i < 3]} for i in range(30)], 5, "label 'b' has 3 row(s), fewer than --folds 5"),
    ([{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(8)], 4, "8 rows are too few for 4 folds"),
    ([{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(30)], 1, "--folds must be at least 2"),
])
def test_clear_errors(tmp_path: Path, tiny_gpt2: Path, capsys: pytest.CaptureFixture, rows: list, folds: int,
                      message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, _, err = cli(capsys, "audit", "--model", str(tiny_gpt2), "--data", str(path), "--folds", str(folds),
                       "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("gptclf: error:") and len(err.strip().splitlines()) <= 2  # the message and its hint


def train_args(flipped: dict, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(flipped["model"]), "--data", str(data), "--epochs", "1", *RECIPE,
            "--checkpoint-every", "0", "--drop-label-issues", str(flipped["dir"] / "audit.csv"), "--out", str(out)]


def test_drop_label_issues_trains_without_them(flipped: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, *train_args(flipped, flipped["data"], tmp_path / "run"))
    assert code == 0, err
    flagged = sorted(flipped["df"][flipped["df"]["issue"] == "label"]["row"])
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    dropped = data["dropped_by_audit"]
    assert dropped["rows"] == flagged and dropped["n_rows"] == len(flagged) and dropped["reason"].startswith("label")
    assert data["n_train"] + data["n_val"] + data["n_test"] == len(flipped["rows"]) - len(flagged) - 1  # 1 empty
    assert f"dropped {len(flagged)} row(s)" in err
    assert "dropped_by_audit" in (tmp_path / "run" / "report.html").read_text()


def test_drop_label_issues_refuses_an_audit_of_other_rows(flipped: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    rows = [dict(r) for r in flipped["rows"]]
    rows[5]["text"] += " changed"
    same_count = write_jsonl(tmp_path / "edited.jsonl", rows)
    fewer = write_jsonl(tmp_path / "fewer.jsonl", rows[:-3])
    for data, message in ((same_count, "other texts"), (fewer, f"had {len(rows)} rows")):
        code, _, err = cli(capsys, *train_args(flipped, data, tmp_path / data.stem))
        assert code == 2 and "is an audit of other rows" in err and message in err and "Traceback" not in err
        assert not (tmp_path / data.stem).exists()


def test_train_audit_is_audit_then_drop_label_issues(flipped: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """train --audit audits the data with the same options into <out>.audit/ (the same audit.csv as
    gptclf audit's, byte for byte), then trains exactly as --drop-label-issues with that audit."""
    code, _, err = cli(capsys, "train", "--model", str(flipped["model"]), "--data", str(flipped["data"]),
                       "--epochs", "1", "--audit", "--audit-epochs", "6", *RECIPE, "--checkpoint-every", "0",
                       "--out", str(tmp_path / "run"))
    assert code == 0, err
    audit = tmp_path / "run.audit"
    assert (audit / "audit.csv").read_text() == (flipped["dir"] / "audit.csv").read_text()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    dropped = config["data"]["dropped_by_audit"]
    flagged = sorted(flipped["df"][flipped["df"]["issue"] == "label"]["row"])
    assert dropped["rows"] == flagged and dropped["audit"] == str(audit / "audit.csv")
    assert dropped["audited_by"] == "gptclf train --audit"
    assert dropped["audit_options"] == {"folds": 5, "audit_epochs": 6, "similarity": 0.97, "outlier_threshold": 0.37037}
    assert config["train"]["audit"] is True and config["train"]["drop_label_issues"] is None
    assert "gptclf train --audit" in (tmp_path / "run" / "report.html").read_text()
    code, _, err = cli(capsys, *train_args(flipped, flipped["data"], tmp_path / "drop"))
    assert code == 0, err
    from safetensors.torch import load_file

    ours, theirs = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("run", "drop"))
    assert ours.keys() == theirs.keys()  # the same rows, seed and recipe: the same weights, bit for bit
    assert all(ours[k].equal(theirs[k]) for k in ours)
    same = json.loads((tmp_path / "drop" / "metrics.json").read_text())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] == same["test_accuracy"]


@pytest.mark.parametrize("args, message", [
    (["train", "--audit", "--drop-label-issues", "x/audit.csv"], "give one of them"),
    (["train", "--folds", "3"], "--folds is an audit option: it needs --audit"),
    (["train", "--resume", "nowhere", "--audit-epochs", "2"], "--resume continues the run with the audit"),
    (["train", "--audit", "--engine", "ray"], "--audit runs here, not on Ray workers"),
    (["tune", "--audit"], "--audit is an option of gptclf train"),
    (["audit", "--audit"], "--audit is an option of gptclf train"),
])
def test_train_audit_refuses_contradictions(tmp_path: Path, tiny_gpt2: Path, capsys: pytest.CaptureFixture,
                                            args: list, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", keyword_rows(40, 6))
    code, _, err = cli(capsys, *args, "--model", str(tiny_gpt2), "--data", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.startswith("gptclf: error:") and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.audit").exists()


def test_train_audit_refuses_an_out_left_from_an_earlier_audit(tmp_path: Path, tiny_gpt2: Path) -> None:
    (tmp_path / "o.audit").mkdir()
    (tmp_path / "o.audit" / "audit.csv").write_text("row\n")
    with pytest.raises(gptclf.GptclfError, match="left from an earlier run"):
        gptclf.train(texts=["a zebra", "b castle"] * 10, labels=["a", "b"] * 10, model=str(tiny_gpt2), audit=True,
                     folds=2, out=str(tmp_path / "o"))
    with pytest.raises(gptclf.GptclfError, match="--folds is an audit option"):
        gptclf.train(texts=["a zebra", "b castle"] * 10, labels=["a", "b"] * 10, model=str(tiny_gpt2), folds=2)


def test_an_interrupted_train_audit_resumes_with_its_audit(flipped: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A train --audit run that crashes after its first checkpoint resumes with the audit it made
    (read again from <out>.audit/, not made again) and drops the same rows."""
    from gptclf.training import state as checkpoint
    from gptclf.training.recipe import resume_training

    real_save = checkpoint.Checkpointer.save

    def crash(self, tensors, state):  # noqa: ANN001
        real_save(self, tensors, state)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", crash)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        gptclf.train(str(flipped["data"]), model=str(flipped["model"]), epochs=2, audit=True, audit_epochs=6,
                     trainable="last_layer", pooling="mean", lr=1e-2, eval_freq=1000, progress=False, out=str(out))
    made = (tmp_path / "run.audit" / "audit.csv").stat().st_mtime_ns
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    resume_training(out, log=lambda s: None, progress=False)
    assert (tmp_path / "run.audit" / "audit.csv").stat().st_mtime_ns == made
    dropped = json.loads((out / "config.json").read_text())["data"]["dropped_by_audit"]
    assert dropped["rows"] == sorted(flipped["df"][flipped["df"]["issue"] == "label"]["row"])
    assert dropped["audited_by"] == "gptclf train --audit"
    assert json.loads((out / "metrics.json").read_text())["resumed_at_step"] > 0
