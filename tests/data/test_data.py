"""Data: the SMS file, download + checksum, readers, the book's balance and split, batching."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf.data import download as data
from gptclf.errors import DataWarning
from gptclf.data.tables import Example, read_table
from helpers import load_data
from gptclf.data.batching import collate, shuffled_batches
from gptclf.data.splits import create_balanced_dataset, random_split
from gptclf.data.sms_spam import download_sms_spam, read_sms_spam
from gptclf.errors import GptclfError


def test_sms_file_reads_every_line(sms_file: Path) -> None:
    ex = read_sms_spam(sms_file)
    assert len(ex) == 5574
    assert sum(e.label == "spam" for e in ex) == 747
    assert sum(e.label == "ham" for e in ex) == 4827


def test_chapter6_split_sizes(sms_env: Path) -> None:
    s = load_data("sms-spam")
    assert (len(s.train), len(s.val), len(s.test)) == (1045, 149, 300)
    assert s.labels == ["ham", "spam"]
    both = s.train + s.val + s.test
    assert sum(e.label == "spam" for e in both) == 747 == sum(e.label == "ham" for e in both)


def test_balance_and_split_match_the_books_pandas_code() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    labels = ["ham"] * 300 + ["spam"] * 40
    rng.shuffle(labels)
    ex = [Example(f"text {i}", lab, i) for i, lab in enumerate(labels)]
    df = pd.DataFrame({"Label": labels, "Text": [e.text for e in ex]})
    # The book's create_balanced_dataset and random_split, verbatim in pandas.
    n_spam = df[df["Label"] == "spam"].shape[0]
    ham = df[df["Label"] == "ham"].sample(n_spam, random_state=123)
    bal = pd.concat([ham, df[df["Label"] == "spam"]])
    shuf = bal.sample(frac=1, random_state=123).reset_index(drop=True)
    te = int(len(shuf) * 0.7)
    ve = te + int(len(shuf) * 0.1)
    tr, va, ts = random_split(create_balanced_dataset(ex, 123), 0.7, 0.1, 123)
    assert [e.text for e in tr] == list(shuf["Text"][:te])
    assert [e.text for e in va] == list(shuf["Text"][te:ve])
    assert [e.text for e in ts] == list(shuf["Text"][ve:])


def _make_zip(tmp_path: Path, payload: bytes, member: str = "SMSSpamCollection") -> Path:
    z = tmp_path / "sms.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme", "x")
        zf.writestr(member, payload)
    return z


def test_download_verifies_and_caches(tmp_path: Path, sms_file: Path) -> None:
    z = _make_zip(tmp_path, sms_file.read_bytes())
    out = download_sms_spam(tmp_path / "cache", urls=["file:///nonexistent/first-mirror.zip", z.as_uri()])
    assert out.read_bytes() == sms_file.read_bytes()
    # Cached: a second call needs no URL at all.
    assert download_sms_spam(tmp_path / "cache", urls=[]) == out


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    z = _make_zip(tmp_path, b"ham\thello\n")
    with pytest.raises(GptclfError, match="checksum mismatch"):
        download_sms_spam(tmp_path / "cache", urls=[z.as_uri()])


def test_download_failure_lists_mirrors(tmp_path: Path) -> None:
    with pytest.raises(GptclfError, match="could not download") as e:
        download_sms_spam(tmp_path / "cache", urls=["file:///nope/a.zip", "file:///nope/b.zip"])
    assert "GPTCLF_SMS_SPAM" in e.value.hint


def test_zip_extraction_cannot_escape(tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../SMSSpamCollection", b"ham\thi\n")
    dest = tmp_path / "out" / "SMSSpamCollection"
    dest.parent.mkdir()
    data.extract_member(z, "SMSSpamCollection", dest)
    assert dest.read_bytes() == b"ham\thi\n"
    assert not (tmp_path.parent / "SMSSpamCollection").exists()


def test_local_copy_given_as_data_path(sms_file: Path) -> None:
    s = load_data(str(sms_file))
    assert s.source.startswith("sms-spam") and len(s.train) == 1045


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_readers(tmp_path: Path, fmt: str) -> None:
    rows = [("hello, \"world\"", "a"), ("multi\nline\ttext", "b"), ("third", "a")]
    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        p.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows) + "\n")
    else:
        import csv

        with open(p, "w", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["text", "label"])
            w.writerows(rows)
    got = read_table(p)
    assert [(e.text, e.label) for e in got] == rows


def test_crlf_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes("\ufefftext,label\r\nhi,a\r\nyo,b\n".encode("utf-8"))
    assert [(e.text, e.label) for e in read_table(p)] == [("hi", "a"), ("yo", "b")]


def test_not_utf8_falls_back_and_says_where(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    with pytest.warns(DataWarning, match=r"d.csv:3: not valid UTF-8"):
        got = read_table(p)
    assert got[1].text == "café"


def test_misnamed_column_suggests_the_right_one(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("message,labels\nhi,a\n")
    with pytest.raises(GptclfError, match=r"no text column 'text'; the columns are \['message', 'labels'\]"):
        read_table(p)
    with pytest.raises(GptclfError) as e:
        read_table(p, text_column="message")
    assert "--label-column 'labels'" in e.value.hint


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("")
    with pytest.raises(GptclfError, match="is empty"):
        read_table(p)


def test_single_class(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(20)))
    with pytest.raises(GptclfError, match="only one class"):
        load_data(str(p))


def test_label_unseen_in_training(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(40)))
    v = tmp_path / "val.csv"
    v.write_text("text,label\nx,a\ny,c\n")
    with pytest.raises(GptclfError, match=r"label\(s\) \['c'\] never seen in training \(first at line 3\)"):
        load_data(str(p), val=str(v), test=str(v))


def test_multiclass_string_labels_and_own_val_test(tmp_path: Path) -> None:
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"t": f"x{i}", "y": ["neg", "neu", "pos"][i % 3]}) + "\n" for i in range(60)))
    s = load_data(str(p), val=str(p), test=str(p), text_column="t", label_column="y", balance="none")
    assert s.labels == ["neg", "neu", "pos"] and len(s.train) == 60 and len(s.test) == 60


def test_field_count_mismatch_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhi,a\nhello, world,b\n")
    with pytest.raises(GptclfError, match=r"d.csv:3: 3 fields, the header has 2"):
        read_table(p)


def test_collate_pads_right_with_the_pad_id() -> None:
    ids, lengths = collate([[1, 2, 3], [4]], pad_id=50256)
    assert ids.tolist() == [[1, 2, 3], [4, 50256, 50256]] and lengths.tolist() == [3, 1]
    ids, _ = collate([[1]], pad_id=0, pad_to=4)
    assert ids.tolist() == [[1, 0, 0, 0]]


def test_length_grouped_batches_cover_each_example_once() -> None:
    lengths = np.random.RandomState(0).randint(1, 100, size=103)
    g = torch.Generator().manual_seed(5)
    batches = shuffled_batches(103, 8, g, drop_last=True, lengths=lengths, group_size=4)
    flat = [i for b in batches for i in b]
    assert len(flat) == 96 == len(set(flat)) and all(len(b) == 8 for b in batches)
    # Grouped batches waste far less padding than plain shuffled ones.
    plain = shuffled_batches(103, 8, torch.Generator().manual_seed(5), lengths=None)
    waste = lambda bs: sum(max(lengths[b]) * len(b) - sum(lengths[b]) for b in bs)  # noqa: E731
    assert waste(batches) < 0.7 * waste(plain)
    # Same seed, same batches.
    again = shuffled_batches(103, 8, torch.Generator().manual_seed(5), lengths=lengths, group_size=4)
    assert again == batches


def test_template_wraps_every_text_and_truncation_keeps_the_question() -> None:
    from gptclf.data.encoding import encode_examples, split_template
    from gptclf.tokenizers.gpt2 import GPT2Tokenizer

    tok = GPT2Tokenizer()
    template = "Message: {text}\nIs this message spam?"
    pre, post = (tok.encode(x) for x in split_template(template))
    ds = encode_examples(tok, ["short", "a much longer text " * 20], [0, 1], max_length=None,
                         context_length=1024, template=template)
    for ids in ds.ids:
        assert ids[: len(pre)] == pre and ids[-len(post):] == post
    assert ds.ids[0] == pre + tok.encode("short") + post
    with pytest.warns(DataWarning, match="1 text"):
        cut = encode_examples(tok, ["short", "a much longer text " * 20], [0, 1], max_length=20,
                              context_length=1024, template=template)
    assert cut.max_length == 20 and len(cut.ids[1]) == 20 and cut.ids[1][-len(post):] == post
    with pytest.raises(GptclfError, match="exactly once"):
        split_template("no slot here")
    with pytest.raises(GptclfError, match="no room"):
        encode_examples(tok, ["x"], [0], max_length=len(pre) + len(post), context_length=1024,
                        template=template)


def test_template_special_tokens_count_but_texts_special_tokens_do_not() -> None:
    from gptclf.data.encoding import tokenize_texts
    from gptclf.tokenizers.gpt2 import GPT2Tokenizer

    tok = GPT2Tokenizer()
    ids, pre, post = tokenize_texts(tok, ["hi <|endoftext|>"], "{text}<|endoftext|>")
    assert post == [50256]                  # the template's marker is the special token
    assert 50256 not in ids[0]              # a text cannot inject it
