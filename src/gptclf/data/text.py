"""Bytes to text, line by line: UTF-8 (a BOM is dropped), else cp1252 with a warning.

Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` and nowhere else (``str.splitlines`` also splits
on U+2028, U+0085, form feeds, ..., which may sit unescaped inside a JSON string or a
message). Each line is decoded on its own, so one line that is not UTF-8 (a Windows
tool's cp1252) does not change how the others read.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import warn

_LINE_END = re.compile(r"\r\n|\r|\n")
_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
CHUNK = 1 << 16


def split_lines(text: str) -> list[str]:
    """Split on ``\\n``, ``\\r\\n`` and ``\\r`` only; a final line ending adds no empty line."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's lines as bytes, each with its line ending, read a chunk at a time.

    Linear in a line's length: each chunk is searched once and a long line is kept as its
    pieces, joined once when it ends (growing one buffer and searching it again per chunk
    took 47 s for an 18 MB one-line JSON, quadratic in the line)."""
    pending: list[bytes] = []  # the line so far; only its last piece may end with "\r"
    while True:
        chunk = stream.read(CHUNK)
        eof = not chunk
        if pending and pending[-1].endswith(b"\r"):  # the last chunk ended in "\r": is it "\r\n"?
            if chunk.startswith(b"\n"):
                pending.append(b"\n")
                chunk = chunk[1:]
            yield b"".join(pending)
            pending = []
        start = 0
        for m in _LINE_END_BYTES.finditer(chunk):
            if m.group() == b"\r" and m.end() == len(chunk):
                break  # a "\r" at the chunk's end may be the first half of "\r\n"
            pending.append(chunk[start:m.end()])
            yield b"".join(pending)
            pending, start = [], m.end()
        if start < len(chunk):
            pending.append(chunk[start:])
        if eof:
            if pending:
                yield b"".join(pending)
            return


def decoded_lines(stream: BinaryIO, where: str | Path,
                  on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Each line of ``stream`` as text, with its line ending (see the module doc); ``on_bytes``
    is told each line's size as it is handed on (a progress bar's measure)."""
    warned = False
    for n, raw in enumerate(_raw_lines(stream), 1):
        if on_bytes:
            on_bytes(len(raw))
        if n == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]  # dropped before any fallback: as cp1252 it would become 'ï»¿'
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if not warned:
                warn(f"{where}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); reading such lines as cp1252")
                warned = True
            try:
                yield raw.decode("cp1252")
            except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
                yield raw.decode("latin-1")


def decode_text(raw: bytes, where: str | Path) -> str:
    """A whole file's text (see :func:`decoded_lines`)."""
    return "".join(decoded_lines(io.BytesIO(raw), where))
