"""Fuzzing the data readers and the zip extractor: arbitrary bytes give rows or a GptclfError.

Inputs are raw bytes and byte strings assembled from the pieces that steer the
parsers (delimiters, quotes, line ends, brackets, a BOM, invalid UTF-8, the column
names), so the fuzzer reaches past the first error. Bounded: a few seconds in CI.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data import download, sms_spam, tables
from gptclf.errors import DataWarning, GptclfError

from helpers import examples, load_data

PIECES = [b",", b"\t", b'"', b"'", b"\n", b"\r", b"\r\n", b"{", b"}", b"[", b"]", b":", b'"text"',
          b'"label"', b"text", b"label", b"ham", b"spam", b"\xef\xbb\xbf", b"\xff", b"\xe9", b"\x00",
          b"\xe2\x80\xa8", b"0", b"1", b"1.0", b"-", b"1e999", b"null", b"true", b" ", b"a", b"\\",
          "\u00e9\u4e2d\U0001f600".encode()]
fuzz_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join),
    # Mostly well-formed tables with damage spliced in.
    st.tuples(st.sampled_from([b"text,label\n", b"text\tlabel\n", b'{"text": "a", "label": "b"}\n', b"[", b""]),
              st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)).map(b"".join),
)
SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".txt"]


def _read(raw: bytes, suffix: str, how: str) -> None:
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        p = Path(d) / f"f{suffix}"
        p.write_bytes(raw)
        try:
            if how == "table":
                rows = tables.read_table(p)
                assert all(isinstance(e.text, str) and isinstance(e.label, str) and e.label for e in rows)
            elif how == "unlabelled":
                tables.read_table(p, label_column=None)
            elif how == "sms":
                rows = sms_spam.read_sms_spam(p)
                assert all(e.label for e in rows)
            else:
                load_data(str(p), balance="none")
        except GptclfError as e:
            assert e.message  # a message the user can act on; anything else propagates and fails


@settings(max_examples=examples(300))
@given(raw=fuzz_bytes, suffix=st.sampled_from(SUFFIXES),
       how=st.sampled_from(["table", "unlabelled", "sms", "splits"]))
def test_arbitrary_bytes_give_rows_or_a_gptclf_error(raw: bytes, suffix: str, how: str) -> None:
    _read(raw, suffix, how)


@settings(max_examples=examples(100))
@given(raw=fuzz_bytes)
def test_arbitrary_zip_bytes_give_a_gptclf_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        z = Path(d) / "x.zip"
        # A zip's magic number in front, so the zip reader (not the table reader) runs.
        z.write_bytes(b"PK\x03\x04" + raw)
        with pytest.raises(GptclfError):
            download.extract_member(z, sms_spam.SMS_SPAM_FILE, Path(d) / "out", expected_sha256=sms_spam.SMS_SPAM_SHA256)
        assert not (Path(d) / "out").exists()
