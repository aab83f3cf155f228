"""The table and SMS readers on awkward input (bad bytes, mixed line ends, huge fields); any table round-trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.data import sms_spam
from gptclf.data.tables import read_table
from gptclf.errors import DataWarning, GptclfError

from helpers import any_text, examples


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

# Labels are stripped by the reader, so generated labels have no surrounding whitespace.
labels = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and s != "")
tables = st.lists(st.tuples(any_text, labels), min_size=1, max_size=12)


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


@settings(max_examples=examples(200), deadline=None)
@given(data=st.binary(max_size=60).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b)), chunk=st.integers(1, 7))
def test_lines_split_alike_at_any_chunk_size(data: bytes, chunk: int) -> None:
    """The line splitter reads a chunk at a time; where the chunks end ("\\r" | "\\n" split
    across two included) never changes the lines."""
    import io
    import re

    from gptclf.data import text

    saved, text.CHUNK = text.CHUNK, chunk
    try:
        got = list(text._raw_lines(io.BytesIO(data)))
    finally:
        text.CHUNK = saved
    assert got == [m.group() for m in re.finditer(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", data)]


def _best_of(n: int, f) -> float:  # noqa: ANN001
    import time

    # CPU seconds of this process, not wall time: a loaded machine (CI's two cores shared with
    # other jobs) preempts the reader and adds wall time that says nothing about its algorithm.
    best = float("inf")
    for _ in range(n):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


@pytest.mark.parametrize("kind", ["one-line json", "tsv cell"])
def test_readers_are_linear_in_the_length_of_a_line(tmp_path: Path, kind: str) -> None:
    """An 18 MB one-line JSON (what json.dump writes) took 47 s, 3.8x per doubling; a TSV with a
    50 MB cell did not finish in 120 s. Sizes 1x and 8x are compared, far enough apart that the
    two cannot be confused: quadratic reading takes 64x (it took 3.8x per doubling, 55x for
    8x), linear reading measured 9x-12x on a 2-core EPYC (memory outside the CPU caches costs a
    little more per byte). A 4x comparison with 7x as the bound failed once under CI's load
    (8.9x, wall time); the bound is now 24x, each size's best of three, in CPU seconds."""
    def write(scale: int) -> Path:
        p = tmp_path / f"{scale}.{'json' if kind == 'one-line json' else 'tsv'}"
        if kind == "one-line json":
            p.write_text(json.dumps([{"text": "word " * 18 + str(i), "label": "ab"[i % 2]}
                                     for i in range(20_000 * scale)]))
        else:
            p.write_text("text\tlabel\n" + "x" * (scale << 22) + "\ta\nshort\tb\n")  # 4, 32 MB
        return p

    times = {s: _best_of(3, lambda p=write(s): read_table(p)) for s in (1, 8)}
    assert times[8] < 24 * times[1], times
