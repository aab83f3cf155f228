"""Reliability and security: bad data, untrusted model files, killed writers, determinism.

Every user error is checked through the real CLI entry point (``gptclf.cli.main``):
exit code 2, one clear message, no traceback. Property tests (hypothesis) cover the
readers and the tokenize / pad / batch / predict path.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from gptclf.data import download, sms_spam
from gptclf.errors import DataWarning
from gptclf.data.batching import collate, shuffled_batches, sorted_batches
from gptclf.data.encoding import encode_examples
from gptclf.data.tables import read_table
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.tokenizers.gpt2 import GPT2Tokenizer

from helpers import SRC, cli, examples, random_classifier, train_args, write_gpt2_config_only, write_run


# ----------------------------------------------------------------------------- helpers


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("gptclf: error:") or "\ngptclf: error:" in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def rows_csv(n: int = 20, labels: str = "ab") -> str:
    return "text,label\n" + "".join(f"text number {i},{labels[i % len(labels)]}\n" for i in range(n))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


# ===================================================================== 1. bad data, CLI


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
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, train, out, "--val", str(val), "--test", str(test)))
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


def test_not_utf8_mixed_line_endings_bom_and_quoted_tabs(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\r\n\"tab\there\",a\r\"line\nbreak\",b\ncaf\xe9,a\r\n")
    with pytest.warns(DataWarning, match=r"d.csv:5: not valid UTF-8 \(byte 0xe9\)"):
        got = read_table(p)  # the BOM is valid UTF-8; the 0xe9 is not: the whole file is cp1252
    assert [(e.text, e.label) for e in got] == [("tab\there", "a"), ("line\nbreak", "b"), ("café", "a")]
    assert [e.line for e in got] == [2, 3, 5]  # physical line numbers, for error messages
    j = tmp_path / "d.jsonl"
    j.write_bytes('{"text": "a\u2028b\x85c", "label": "x"}\r{"text": "d", "label": 2}\r\n'.encode())
    assert [(e.text, e.label) for e in read_table(j)] == [("a\u2028b\x85c", "x"), ("d", "2")]


def test_sms_reader_bad_bytes_and_empty_label(tmp_path: Path) -> None:
    p = tmp_path / "SMSSpamCollection"
    p.write_bytes(b"ham\tcaf\xe9\r\nspam\twin\rham\tok\n")
    with pytest.warns(DataWarning, match="not valid UTF-8"):
        assert [(e.label, e.text) for e in sms_spam.read_sms_spam(p)] == [("ham", "café"), ("spam", "win"), ("ham", "ok")]
    p.write_bytes(b"ham\thi\n\tno label\n")
    with pytest.raises(GptclfError, match=r"SMSSpamCollection:2: empty label"):
        sms_spam.read_sms_spam(p)


def test_long_csv_fields_are_read_not_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    big = "x" * 300_000  # over csv's default 128 KiB field limit
    p.write_text(f"text,label\n{big},a\nshort,b\n")
    assert [len(e.text) for e in read_table(p)] == [300_000, 5]


# ------------------------------------------------------- property tests: readers round-trip

# Any text a file can hold: every plane, control characters, U+2028, NUL; labels are
# stripped by the reader, so generated labels have no surrounding whitespace.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
labels = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and s != "")
tables = st.lists(st.tuples(texts, labels), min_size=1, max_size=12)


def _field(value: str, delim: str, quote_all: bool) -> str:
    if quote_all or any(c in value for c in (delim, '"', "\r", "\n")) or value != value.strip(" "):
        return '"' + value.replace('"', '""') + '"'
    return value


@settings(max_examples=examples(150))
@given(rows=tables, fmt=st.sampled_from(["csv", "tsv", "jsonl", "csv-auto", "tsv-auto"]),
       ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=4),
       quote_all=st.booleans(), bom=st.booleans(), ascii_json=st.booleans(), final_newline=st.booleans())
def test_readers_give_back_the_same_rows_in_order(rows, fmt, ends, quote_all, bom, ascii_json, final_newline) -> None:
    import tempfile

    kind = fmt.split("-")[0]
    lines: list[str]
    if kind == "jsonl":
        lines = [json.dumps({"text": t, "label": lab}, ensure_ascii=ascii_json) for t, lab in rows]
    else:
        d = "," if kind == "csv" else "\t"
        lines = [d.join(["text", "label"])]
        lines += [d.join(_field(v, d, quote_all) for v in (t, lab)) for t, lab in rows]
    # Mixed line endings: each line gets the next ending of the drawn cycle.
    body = "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    if not final_newline:
        body = body[: -len(ends[(len(lines) - 1) % len(ends)])]
    raw = (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8")
    suffix = ".txt" if fmt.endswith("auto") else f".{kind}"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # valid UTF-8 must not trigger the fallback
        p = Path(tmp) / f"d{suffix}"
        p.write_bytes(raw)
        got = read_table(p)
    assert [(e.text, e.label) for e in got] == rows


# --------------------------------------- property tests: tokenize, pad, batch, predict

@settings(max_examples=examples(60))
@given(texts=st.lists(texts, min_size=1, max_size=20), max_length=st.one_of(st.none(), st.integers(1, 40)))
def test_encode_gives_one_row_per_text_and_counts_truncation(texts, max_length) -> None:
    tok = GPT2Tokenizer()
    raw = tok.encode_batch(texts)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = encode_examples(tok, texts, list(range(len(texts))), max_length, context_length=32)
    assert len(ds) == len(texts) and ds.labels.tolist() == list(range(len(texts)))
    limit = min(max_length or max(max(len(r) for r in raw), 1), 32)
    assert ds.max_length == limit
    for r, ids in zip(raw, ds.ids):
        assert 1 <= len(ids) <= limit
        assert ids == (r[:limit] if r else [tok.pad_id])
    n_long = sum(len(r) > limit for r in raw)
    msgs = [str(x.message) for x in w if issubclass(x.category, DataWarning)]
    if n_long:
        assert any(f"{n_long} text(s) longer than {limit} tokens were truncated" in m for m in msgs), msgs
    else:
        assert not any("truncated" in m for m in msgs)


ids_lists = st.lists(st.lists(st.integers(0, 50256), min_size=1, max_size=12), min_size=1, max_size=30)


@settings(max_examples=examples(100))
@given(ids=ids_lists, pad_to_extra=st.one_of(st.none(), st.integers(0, 5)))
def test_collate_keeps_every_token_and_pads_right(ids, pad_to_extra) -> None:
    pad_to = None if pad_to_extra is None else max(map(len, ids)) + pad_to_extra
    batch, lengths = collate(ids, pad_id=50256, pad_to=pad_to)
    assert batch.shape == (len(ids), pad_to or max(map(len, ids)))
    assert lengths.tolist() == [len(x) for x in ids]
    for row, x in zip(batch.tolist(), ids):
        assert row[: len(x)] == x and set(row[len(x):]) <= {50256}


@settings(max_examples=examples(100))
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=80), batch_size=st.integers(1, 16),
       seed=st.integers(0, 2**31 - 1), drop_last=st.booleans(), group=st.integers(0, 5))
def test_batches_cover_every_row_exactly_once(lengths, batch_size, seed, drop_last, group) -> None:
    n, lens = len(lengths), np.array(lengths)
    order = sorted_batches(lens, batch_size)
    flat = [i for b in order for i in b]
    assert sorted(flat) == list(range(n)) and all(1 <= len(b) <= batch_size for b in order)
    assert all(lens[a] >= lens[b] for a, b in zip(flat, flat[1:]))  # longest first
    sb = shuffled_batches(n, batch_size, torch.Generator().manual_seed(seed), drop_last, lens, group)
    flat = [i for b in sb for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(n))
    assert len(flat) == (n - n % batch_size if drop_last else n)
    if drop_last:
        assert all(len(b) == batch_size for b in sb)
    again = shuffled_batches(n, batch_size, torch.Generator().manual_seed(seed), drop_last, lens, group)
    assert again == sb


@pytest.fixture(scope="module")
def tiny_clf(micro_gpt2_config: Path) -> Classifier:
    model = random_classifier(micro_gpt2_config, ("neg", "neu", "pos"), seed=1)
    return Classifier(model, GPT2Tokenizer(), {"labels": ["neg", "neu", "pos"], "max_length": 32,
                                               "padding": "dynamic"}, torch.device("cpu"))


@settings(max_examples=examples(40))
@given(texts=st.lists(texts, min_size=0, max_size=12), batch_size=st.integers(1, 8), data=st.data())
def test_predictions_one_per_text_in_order_and_batch_independent(tiny_clf: Classifier, texts, batch_size, data) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        probs = tiny_clf.predict_proba(texts, batch_size=batch_size)
        assert probs.shape == (len(texts), 3)
        if not texts:
            return
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        alone = np.stack([tiny_clf.predict_proba([t])[0] for t in texts])
        assert np.abs(probs - alone).max() < 1e-5
        perm = data.draw(st.permutations(range(len(texts))))
        shuffled = tiny_clf.predict_proba([texts[i] for i in perm], batch_size=batch_size)
        assert np.abs(shuffled - probs[list(perm)]).max() < 1e-5
        results = tiny_clf.predict(texts, batch_size=batch_size)
    assert [r["label"] for r in results] == [tiny_clf.labels[k] for k in probs.argmax(1)]


# ================================================================ 2. untrusted model files


UNSAFE = [
    (re.compile(r"\bimport\s+pickle\b|\bfrom\s+pickle\b|\bpickle\.load"), "pickle"),
    (re.compile(r"\bimport\s+(c?pickle|dill|joblib|shelve|marshal)\b"), "an unpickler"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_source_never_unpickles() -> None:
    """Scan src/: no pickle, every torch.load has weights_only=True, every np.load allow_pickle=False."""
    found = []
    for f in sorted(SRC.rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for m in pattern.finditer(text):
                found.append(f"{f.name}:{text[: m.start()].count(chr(10)) + 1}: {what}")
        for call in ("torch.load(", "np.load(", "numpy.load("):
            start = 0
            while (i := text.find(call, start)) >= 0:
                depth, j = 0, i + len(call) - 1
                while j < len(text):  # the call's full argument list, over several lines
                    depth += {"(": 1, ")": -1}.get(text[j], 0)
                    if depth == 0:
                        break
                    j += 1
                args = text[i: j + 1]
                ok = "weights_only=True" in args if call == "torch.load(" else "allow_pickle=False" in args
                if not ok:
                    found.append(f"{f.name}:{text[:i].count(chr(10)) + 1}: {args[:60]}")
                start = j
    assert not found, found
    assert len(list(SRC.rglob("*.py"))) > 10  # the scan did look at the package


def test_config_and_weights_that_disagree_are_refused(tmp_path: Path, random_run: Path) -> None:
    import shutil

    def variant(name: str, edit) -> Path:
        d = tmp_path / name
        shutil.copytree(random_run, d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    cases = [
        (lambda c: c["architecture"].update(emb_dim=32), "disagree: shape mismatch"),
        (lambda c: c["architecture"].update(n_layers=2), "disagree: missing tensors"),
        (lambda c: c.update(labels=["a", "b", "c"]), "out_head.weight: file (2, 16) vs config (3, 16)"),
        (lambda c: c["architecture"].update(vocab_size=1000), "disagree"),
        (lambda c: c.update(max_length=64), "longer than the model's context of 32"),
        (lambda c: c.update(labels=["a", "a"]), "distinct"),
        (lambda c: c.update(pooling="median"), "pooling 'median'"),
        (lambda c: c.update(max_length="32"), "max_length '32'"),
        (lambda c: c["architecture"].update(surprise=1), "unexpected keyword argument 'surprise'"),
        (lambda c: c["architecture"].update(n_heads=3), "not a multiple of n_heads"),
        (lambda c: c["architecture"].update(emb_dim=-16), "emb_dim=-16"),
        (lambda c: c["architecture"].update(n_layers=True), "n_layers=True"),
        (lambda c: c["architecture"].update(arch="mamba"), "unknown architecture 'mamba'"),
        (lambda c: c.update(architecture=[1, 2]), "must be a JSON object"),
    ]
    for i, (edit, msg) in enumerate(cases):
        with pytest.raises(GptclfError) as e:
            Classifier.load(variant(f"v{i}", edit))
        assert msg in str(e.value), (i, str(e.value))


def test_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    small = write_gpt2_config_only(tmp_path / "small", vocab_size=1000, n_positions=32, n_embd=16, n_layer=1,
                                   n_head=2)
    model = random_classifier(small)
    run = write_run(tmp_path / "run", model)
    with pytest.raises(GptclfError, match="the tokenizer has 50257 tokens but the model's embedding only 1000"):
        Classifier.load(run)


def test_absurd_sizes_are_refused_before_allocating(tmp_path: Path, random_run: Path) -> None:
    import resource
    import shutil

    d = tmp_path / "huge"
    shutil.copytree(random_run, d)
    cfg = json.loads((d / "config.json").read_text())
    # ~20 TB of weights: each size is allowed on its own, together they are absurd.
    cfg["architecture"].update(emb_dim=65536, n_heads=64, n_layers=100, context_length=1 << 20)
    (d / "config.json").write_text(json.dumps(cfg))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(GptclfError, match="disagree"):
        Classifier.load(d)
    # The same sizes as a backbone to train from scratch: refused by the memory check.
    hf = write_gpt2_config_only(tmp_path / "hf", n_embd=65536, n_head=64, n_layer=100)
    from gptclf.loading import load_backbone

    with pytest.raises(GptclfError, match=r"needs \d+\.\d GiB for its weights, more than"):
        load_backbone(str(hf), init="random")
    write_gpt2_config_only(tmp_path / "hf2", vocab_size=10**12)
    with pytest.raises(GptclfError, match="vocab_size=1000000000000 is not an integer between"):
        load_backbone(str(tmp_path / "hf2"), init="random")
    assert time.perf_counter() - t0 < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 * 1024  # KiB: nothing big allocated


def test_tokenizer_paths_in_config_cannot_leave_the_directory(tmp_path: Path, random_run: Path) -> None:
    import shutil

    pytest.importorskip("tokenizers")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    for i, file in enumerate(["../secret.json", str(secret), "..", "sub/tokenizer.json", "a\\..\\b", 7]):
        d = tmp_path / f"t{i}"
        shutil.copytree(random_run, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["tokenizer"] = {"type": "hf-tokenizers", "file": file, "pad_id": 0}
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(GptclfError, match="is not a plain file name"):
            Classifier.load(d)
    cfg["tokenizer"] = {"type": "hf-tokenizers", "file": "tokenizer.json", "pad_id": -1}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="pad_id -1 is not a token id"):
        Classifier.load(d)


def test_shard_index_cannot_name_files_outside(tmp_path: Path) -> None:
    from gptclf.loading import load_backbone

    d = write_gpt2_config_only(tmp_path / "m")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "../evil.safetensors"}}))
    with pytest.raises(GptclfError, match="names the shard '../evil.safetensors'"):
        load_backbone(str(d))
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(GptclfError, match="not a valid safetensors index"):
        load_backbone(str(d))
    (d / "config.json").write_text("[1, 2")
    with pytest.raises(GptclfError, match="is not valid JSON"):
        load_backbone(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    with pytest.raises(GptclfError, match="lacks 'vocab_size'"):
        load_backbone(str(d), init="random")


def _load_or_gptclf_error(run: Path) -> bool:
    try:
        Classifier.load(run)
        return True
    except GptclfError:
        return False


@settings(max_examples=examples(25))
@given(data=st.data())
def test_damaged_safetensors_is_a_gptclf_error(random_run: Path, data) -> None:
    import shutil
    import tempfile

    raw = (random_run / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    kind = data.draw(st.sampled_from(["truncate", "flip-header", "flip-length"]))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "run"
        shutil.copytree(random_run, d)
        b = bytearray(raw)
        if kind == "truncate":
            b = b[: data.draw(st.integers(0, len(raw) - 1))]
        elif kind == "flip-header":
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(8, 8 + header_len - 1))
                b[i] ^= data.draw(st.integers(1, 255))
        else:
            b[data.draw(st.integers(0, 7))] ^= data.draw(st.integers(1, 255))
        (d / "model.safetensors").write_bytes(bytes(b))
        ok = _load_or_gptclf_error(d)  # any other exception fails the test
        if kind != "flip-header":
            assert not ok  # a flipped header byte may land in harmless metadata; the others never load


def test_safetensors_header_claiming_huge_sizes(tmp_path: Path, random_run: Path) -> None:
    import shutil

    for shape, end in ([10**9, 10**9], 4 * 10**18), ([16, 16], 2**62), ([2**40], 2**42):
        d = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
        shutil.copytree(random_run, d)
        header = json.dumps({"tok_emb.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, end]}}).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
        with pytest.raises(GptclfError, match="not a valid safetensors file"):
            Classifier.load(d)
    d = tmp_path / "len"
    shutil.copytree(random_run, d)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(GptclfError, match="not a valid safetensors file"):
        Classifier.load(d)


# ------------------------------------------------------------------ downloads and zips


def _zip_with(path: Path, entries: list[tuple[str, bytes, bool]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload, symlink in entries:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.create_system = 3
                info.external_attr = (0o120777 << 16)  # S_IFLNK: the payload is the link target
            zf.writestr(info, payload)
    return path


def test_zip_members_cannot_write_outside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "sms"
    target.mkdir(parents=True)
    dest = target / sms_spam.SMS_SPAM_FILE
    outside = tmp_path / "outside"
    for entries in (
        [("../../outside/SMSSpamCollection", b"ham\thi\n", False)],
        [(f"{outside}/SMSSpamCollection", b"ham\thi\n", False)],
        [("/etc/SMSSpamCollection", b"ham\thi\n", False)],
        [("SMSSpamCollection", str(outside / "x").encode(), True)],
        [("..\\..\\SMSSpamCollection", b"ham\thi\n", False)],
    ):
        z = _zip_with(tmp_path / "evil.zip", entries)
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest)
        assert dest.is_file() and not dest.is_symlink()
        assert dest.read_bytes() == entries[0][1]  # the bytes, wherever the archive says they go
        assert not outside.exists() and not Path("/etc/SMSSpamCollection").exists()
        assert sorted(p.name for p in target.iterdir()) == [sms_spam.SMS_SPAM_FILE]
        # With the checksum on, none of these is accepted, and the good copy stays.
        dest.write_bytes(b"good copy")
        with pytest.raises(GptclfError, match="checksum mismatch"):
            download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest, expected_sha256=sms_spam.SMS_SPAM_SHA256)
        assert dest.read_bytes() == b"good copy"
        assert sorted(p.name for p in target.iterdir()) == [sms_spam.SMS_SPAM_FILE]


def test_zip_bomb_and_corrupt_zip_are_refused(tmp_path: Path) -> None:
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(sms_spam.SMS_SPAM_FILE, b"\0" * (3 << 20))  # compresses to a few KB
    assert z.stat().st_size < 50_000
    dest = tmp_path / "out"
    with pytest.raises(GptclfError, match="larger than 1 MB"):
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest, max_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == [z]
    raw = bytearray(z.read_bytes())
    raw[40:60] = b"\xff" * 20  # inside the compressed stream
    z.write_bytes(bytes(raw))
    with pytest.raises(GptclfError, match="is not a readable zip archive|has no member"):
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest)
    assert list(tmp_path.iterdir()) == [z]


def test_bad_download_does_not_replace_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTCLF_SMS_SPAM", raising=False)
    z = _zip_with(tmp_path / "mirror.zip", [(sms_spam.SMS_SPAM_FILE, b"ham\ttampered\n", False)])
    cached = tmp_path / "c" / "sms_spam_collection" / sms_spam.SMS_SPAM_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stale but not replaced by bad bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # "failed its checksum; downloading it again"
        with pytest.raises(GptclfError, match="checksum mismatch"):
            sms_spam.download_sms_spam(tmp_path / "c", urls=[z.as_uri()])
    assert cached.read_bytes() == b"stale but not replaced by bad bytes"
    assert sorted(p.name for p in cached.parent.iterdir()) == [sms_spam.SMS_SPAM_FILE]


# =============================================================== 3. killed while saving

DRIVER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from gptclf.models import registry as models
    from gptclf.models.classifier import SequenceClassifier, replace_head
    from gptclf.models.gpt2 import GPT2Config
    from gptclf.config import RunConfig
    from gptclf.rundir.save import save_run
    from gptclf.tokenizers.gpt2 import GPT2Tokenizer

    root = Path(sys.argv[1])
    cfg = GPT2Config(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=1)
    model = SequenceClassifier(replace_head(models.build_model(cfg), 2))
    tok = GPT2Tokenizer()
    i = len([p for p in root.iterdir() if p.name.startswith("run-")]) if root.exists() else 0
    print("ready", flush=True)
    while True:
        with torch.no_grad():
            model.backbone.out_head.bias.fill_(float(i))  # each run's weights say which run it is
        run_config = {"labels": ["a", "b"], "max_length": 32, "pad_id": 50256, "pooling": "last-nonpad",
                      "padding": "dynamic", "train": {"epochs": 1}, "run_index": i}
        save_run(root / f"run-{i:05d}", model, tok, RunConfig.for_model(model, tok, **run_config), {"i": i},
                 {"steps": [], "epochs": []})
        i += 1
""")


def test_runs_survive_sigkill_at_random_points(tmp_path: Path) -> None:
    """Kill a process that saves runs in a loop at random moments: every run directory that
    exists is complete and loads, ``latest`` always points at a complete run, and a
    killed writer's temporary directory is cleaned up by the next save."""
    kills = int(os.environ.get("GPTCLF_KILLS", "6"))
    root = tmp_path / "runs"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    rng = random.Random(int(os.environ.get("GPTCLF_KILL_SEED", "7")))
    mid_save = 0
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        leftovers = [p for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
        mid_save += any(".tmp-" in p.name for p in leftovers)
        # At most the one save that was cut short has left a (hidden) temporary.
        assert len([p for p in leftovers if ".tmp-" in p.name and p.is_dir()]) <= 1, leftovers
    runs = sorted(p for p in root.iterdir() if p.name.startswith("run-"))
    assert runs, "no run was ever saved: the kills came too early to test anything"
    for i, run in enumerate(runs):
        assert run.name == f"run-{i:05d}"  # no gaps: a run cut short is redone under its name
        clf = Classifier.load(run)
        assert clf.config["run_index"] == i
        assert float(clf.model.backbone.out_head.bias[0]) == float(i)
        assert json.loads((run / "metrics.json").read_text()) == {"i": i}
    latest = root / "latest"
    if latest.is_symlink():
        assert latest.resolve().parent == root.resolve() and Classifier.load(latest).config["run_index"] >= 0
    print(f"\n{kills} kills, {mid_save} while a save was being written, {len(runs)} complete runs, all loadable")


# ================================================================== 5. determinism


def test_same_seed_same_metrics_and_weights_through_the_cli(capsys, tmp_path: Path, micro_gpt2_config: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"{'buy now' if i % 2 else 'see you'} {i} {'!' * (i % 5)},"
                                          f"{'spam' if i % 2 else 'ham'}\n" for i in range(80)))

    def run(name: str, seed: str) -> Path:
        code, _, err = cli(capsys, *train_args(micro_gpt2_config, f, tmp_path / name, "--epochs", "2",
                                               "--eval-freq", "5", "--seed", seed, "--lr", "1e-3"))
        assert code == 0, err
        return tmp_path / name

    timing = re.compile(r"seconds|per_second")

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not timing.search(k)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    a, b, c = run("a", "1"), run("b", "1"), run("c", "2")
    for name in ("metrics.json", "history.json"):
        assert strip(json.loads((a / name).read_text())) == strip(json.loads((b / name).read_text())), name
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    ca["train"].pop("out"), cb["train"].pop("out")
    assert ca == cb
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # and the seed does matter
