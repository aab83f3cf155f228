"""User errors through the real CLI entry point: exit code 2, one clear message, no traceback.

Also: data warnings are counted, and messy but valid files still train (``gptclf.cli.main``
in-process, a config-only micro GPT-2 with --init random).
"""

from __future__ import annotations

import builtins
import io
import json
import re
import sys
from pathlib import Path

import pytest

from helpers import cli, train_args

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("gptclf: error:") or "\ngptclf: error:" in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def rows_csv(n: int = 20, labels: str = "ab") -> str:
    return "text,label\n" + "".join(f"text number {i},{labels[i % len(labels)]}\n" for i in range(n))


@pytest.mark.parametrize("name,content,needles", [
    ("empty.csv", b"", ["is empty"]),
    ("blank.csv", b"\n \r\n\t\n", ["is empty"]),
    ("header.csv", b"text,label\n", ["has a header but no rows"]),
    ("cols.csv", b"message,category\nhi,a\nho,b\n", ["no text column 'text'", "['message', 'category']"]),
    ("near.csv", b"texts,label\nhi,a\nho,b\n", ["no text column 'text'", "did you mean --text-column 'texts'"]),
    ("nolabel.tsv", b"text\tlabl\nhi\ta\n", ["no label column 'label'", "--label-column 'labl'"]),
    ("dup.csv", b"text,text,label\na,b,c\n", ["names column(s) ['text'] more than once"]),
    ("fields.csv", b"text,label\nhi,a\nhello, world,b\n", ["fields.csv:3: 3 fields, the header has 2"]),
    ("quote.csv", b'text,label\n"unterminated,a\n', ["fields, the header has 2"]),
    ("emptylabel.csv", b"text,label\nhi,a\nho,\n", ["emptylabel.csv:3: empty label"]),
    ("allempty.csv", b"text,label\n ,a\n\"\",b\n", ["no non-empty texts", "skipped 2 empty text(s)"]),
    ("oneclass.csv", rows_csv(20, "a").encode(), ["only one class ('a')"]),
    ("few.csv", rows_csv(4).encode(), ["the validation split is empty"]),
    ("obj.json", b'{"text": "a", "label": "b"}', ["expected a JSON list of objects"]),
    ("lists.json", b'[["a", "b"], ["c", "d"]]', ["expected a JSON list of objects"]),
    ("emptylist.json", b"[]", ["has no rows"]),
    ("deep.json", b"[" * 100_000, ["invalid JSON", "RecursionError"]),
    ("bigint.jsonl", b'{"text": 1' + b"1" * 5000 + b', "label": "a"}\n', ["bigint.jsonl:1: invalid JSON"]),
    ("scalar.jsonl", b'{"text": "a", "label": "x"}\n42\n', ["scalar.jsonl:2: expected a JSON object, got int"]),
    ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n', ["bad.jsonl:2: invalid JSON"]),
    ("listlabel.jsonl", b'{"text": "a", "label": ["x"]}\n', ["listlabel.jsonl:1: column 'label' holds a JSON list"]),
    ("objtext.jsonl", b'{"text": {"a": 1}, "label": "x"}\n', ["column 'text' holds a JSON dict"]),
])
def test_bad_training_data_is_one_clear_error(capsys, tmp_path: Path, micro_gpt2_config: Path, name: str,
                                              content: bytes, needles: list[str]) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, f, tmp_path / "out"))
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_cli_option_and_path_errors(capsys, tmp_path: Path, micro_gpt2_config: Path, random_run: Path) -> None:
    ok = tmp_path / "ok.csv"
    ok.write_text(rows_csv(20))
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("text,label\nhi,a\nho,c\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000)
    for argv, needle in [
        (train_args(micro_gpt2_config, ok, tmp_path / "o1", "--max-length", "0"), "--max-length must be at least 1"),
        (train_args(micro_gpt2_config, tmp_path, tmp_path / "o2"), "is a directory"),
        (train_args(micro_gpt2_config, tmp_path / "nope.csv", tmp_path / "o3"), "no such file"),
        (["predict", "--model", str(random_run), "--batch-size", "0", "hi"], "--batch-size must be at least 1"),
        (["predict", "--model", str(random_run), "--file", str(tmp_path)], "is a directory"),
        (["evaluate", "--model", str(random_run), "--data", str(ok), "--batch-size", "-1"], "--batch-size"),
        (["evaluate", "--model", str(random_run), "--data", str(ok), "--text-column", "txt"],
         "did you mean --text-column 'text'"),
        (["evaluate", "--model", str(random_run), "--data", str(unseen)], r"labels \['c'\] are not among the model's"),
        (["evaluate", "--model", str(random_run), "--data", str(deep)], "invalid JSON"),
        (["predict", "--model", str(ok), "hi"], "is not a gptclf model config|has no config.json"),
    ]:
        code, _, err = cli(capsys, *argv)
        assert_clean_error(code, err)
        assert re.search(needle, err), (needle, err)


def test_unreadable_file_is_a_clear_error(capsys, tmp_path: Path, micro_gpt2_config: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "locked.csv"
    f.write_text(rows_csv())
    real = builtins.open

    def locked_open(file, *args, **kwargs):  # chmod 000 does not stop root, who runs CI here
        if Path(str(file)).name == "locked.csv":
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", locked_open)
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, f, tmp_path / "out"))
    assert_clean_error(code, err, "Permission denied", "locked.csv")


def test_evaluate_with_nothing_to_evaluate(capsys, tmp_path: Path, random_run: Path) -> None:
    f = tmp_path / "empties.csv"
    f.write_text("text,label\n  ,a\n,b\n")
    code, _, err = cli(capsys, "evaluate", "--model", str(random_run), "--data", str(f))
    assert_clean_error(code, err, "no texts to evaluate", "skipped 2 empty text(s) (lines [2, 3])")


def test_warnings_are_counted_and_training_still_runs(capsys, tmp_path: Path, micro_gpt2_config: Path) -> None:
    """Empty texts, texts far longer than the context, train/test duplicates: each is
    reported with its count, nothing is dropped silently, and the run succeeds."""
    long_text = "word " * 400  # ~400 tokens against a 32-token context
    rows = [{"text": f"message {i}" if i % 7 else long_text + str(i), "label": i % 2} for i in range(40)]
    rows += [{"text": "  ", "label": 0}, {"text": "", "label": 1}, {"text": None, "label": 1}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Numeric labels in JSON (0, 1, 1.0) and string labels in CSV ("0", "1") are the same classes.
    test = tmp_path / "test.csv"
    test.write_text("text,label\nmessage 1,1\nmessage 2,0\nsomething new,1\n")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"text": "message 3", "label": 1.0}) + "\n"
                   + json.dumps({"text": "other", "label": 0}) + "\n")
    out = tmp_path / "run"
    # 6 of 40 texts are long: left out, --long-text would read them in windows (chunk); cut them here.
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, train, out, "--val", str(val), "--test", str(test),
                                           "--long-text", "truncate"))
    assert code == 0, err
    assert "Traceback" not in err
    assert "skipped 3 empty text(s) (lines [41, 42, 43])" in err
    assert re.search(r"train: \d+ text\(s\) longer than 32 tokens were truncated", err), err
    assert "2 of 3 test texts also appear in the training split (leakage" in err
    assert "1 of 2 validation texts also appear in the training split" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["labels"] == ["0", "1"]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_val"], m["n_test"]) == (2, 3)


def test_messy_but_valid_file_trains_with_every_row(capsys, tmp_path: Path, micro_gpt2_config: Path) -> None:
    """BOM, \\r\\n / \\r / \\n mixed, quoted tabs and newlines, one cp1252 byte: every row is
    kept (1 + 9 + 20 of 30 rows in the three splits) and the fallback names its line."""
    ends = ["\r\n", "\r", "\n"]
    rows = [f'"row {i}\twith tab\nand newline",{"ab"[i % 2]}' for i in range(30)]
    body = "text,label" + ends[0] + "".join(r + ends[i % 3] for i, r in enumerate(rows))
    raw = b"\xef\xbb\xbf" + body.encode().replace(b"row 17", b"r\xe9w 17")
    f = tmp_path / "messy.csv"
    f.write_bytes(raw)
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, f, tmp_path / "run"))
    assert code == 0, err
    assert re.search(r"messy.csv:\d+: not valid UTF-8 \(byte 0xe9\)", err)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == 30


def test_predict_reads_stdin_bytes_that_are_not_utf8(capsys, random_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 ok\r\n\nsecond\rthird\n")))
    code, out, err = cli(capsys, "predict", "--model", str(random_run), "--json")
    assert code == 0, err
    assert [json.loads(x)["text"] for x in out.splitlines()] == ["café ok", "second", "third"]
    assert "stdin:1: not valid UTF-8" in err
