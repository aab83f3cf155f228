"""Read an untrusted GGUF file's header, checking it against the file's length as it goes.

``gguf.GGUFReader`` trusts every count in the header: an 89-byte file declaring a uint8
array of 2^40 elements made it allocate without end (about 190 MB/s until the kernel
killed it). A ``--model x.gguf``, or the base a LoRA run names, may come from anyone, so
this walks the header itself -- every string length, array count, key/value and tensor
count is checked against the bytes that remain, so the walk is linear in the file's
size and allocates nothing large -- and refuses with a clear message what could not fit.

The walk also keeps what it reads (:func:`read_gguf_header`): the metadata and the
tensors' names, shapes, types and offsets. ``gguf.GGUFReader`` took seconds to parse a
49,152-token vocabulary (a numpy view per string); this takes a fraction of that.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GptclfError

# GGUF value types -> fixed size in bytes (8: string and 9: array are variable).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_MAX_DIMS = 4        # GGML_MAX_DIMS
_MAX_DEPTH = 4       # arrays of arrays: real files nest at most once


class _Bad(Exception):
    pass


class _Cursor:
    def __init__(self, buf: mmap.mmap, endian: str) -> None:
        self.buf, self.pos, self.end, self.e = buf, 0, len(buf), endian

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.end - self.pos:
            raise _Bad(f"{what} needs {n} bytes at offset {self.pos}, but the file has {self.end - self.pos} left")

    def u(self, size: int, what: str) -> int:
        self.need(size, what)
        fmt = {4: "I", 8: "Q"}[size]
        (v,) = struct.unpack_from(self.e + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def skip_string(self, what: str) -> None:
        n = self.u(8, what)
        self.need(n, what)
        self.pos += n

    def string(self, what: str) -> str:
        n = self.u(8, what)
        self.need(n, what)
        try:
            text = bytes(self.buf[self.pos: self.pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8 (offset {self.pos})") from None
        self.pos += n
        return text

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """The value at the cursor as Python (lists for arrays), checked as :meth:`skip_value` checks."""
        if vtype in _FIXED:
            self.need(_FIXED[vtype], what)
            (v,) = struct.unpack_from(self.e + _FORMATS[vtype], self.buf, self.pos)
            self.pos += _FIXED[vtype]
            return v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth < _MAX_DEPTH:
            etype, count = self.u(4, what), self.u(8, what)
            if etype in _FIXED:
                self.need(count * _FIXED[etype], f"{what} ({count} elements)")
                dtype = np.dtype(_FORMATS[etype]).newbyteorder(self.e)
                out = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * _FIXED[etype]
                return out
            self.need(count * 8, f"{what} ({count} elements)")
            return [self.value(etype, what, depth + 1) for _ in range(count)]
        raise _Bad(f"{what} has unknown value type {vtype}")

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _FIXED:
            self.need(_FIXED[vtype], what)
            self.pos += _FIXED[vtype]
        elif vtype == _STRING:
            self.skip_string(what)
        elif vtype == _ARRAY and depth < _MAX_DEPTH:
            etype, count = self.u(4, what), self.u(8, what)
            if etype in _FIXED:
                self.need(count * _FIXED[etype], f"{what} ({count} elements)")
                self.pos += count * _FIXED[etype]
                return
            # Each string or array element takes at least 8 bytes: refuse a count that cannot fit.
            self.need(count * 8, f"{what} ({count} elements)")
            for _ in range(count):
                self.skip_value(etype, what, depth + 1)
        else:
            raise _Bad(f"{what} has unknown value type {vtype}")


@dataclass
class TensorInfo:
    name: str
    dims: list[int]      # fastest-varying first, as GGUF lists them
    type: int            # a ggml quantization type (gguf.GGMLQuantizationType's value)
    offset: int          # from the start of the data section


@dataclass
class GGUFHeader:
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0  # where the (aligned) data section begins
    size: int = 0        # the file's length
    little_endian: bool = True


def check_gguf_header(path: Path) -> None:
    """Raise :class:`GptclfError` unless every count in ``path``'s GGUF header fits the file."""
    read_gguf_header(path, values=False)


def read_gguf_header(path: Path, values: bool = True) -> GGUFHeader:
    """``path``'s metadata and tensor descriptions (with ``values=False`` only checked), or a
    :class:`GptclfError` saying what does not fit."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk(buf, values)
    except _Bad as e:
        raise GptclfError(f"{path} is not a readable GGUF file: {e}",
                          hint="the file is truncated, damaged or crafted; download it again") from None
    except (OSError, ValueError) as e:  # an empty file cannot be mapped
        raise GptclfError(f"{path} is not a readable GGUF file ({e})") from None


def _walk(buf: mmap.mmap, values: bool = False) -> GGUFHeader:
    if len(buf) < 24 or buf[:4] != b"GGUF":
        raise _Bad("no GGUF magic and header")
    endian = "<" if struct.unpack_from("<I", buf, 4)[0] < 0x10000 else ">"
    c = _Cursor(buf, endian)
    c.pos = 4
    version = c.u(4, "the version")
    if version not in (2, 3):
        raise _Bad(f"version {version} (gptclf reads GGUF versions 2 and 3)")
    n_tensors, n_kv = c.u(8, "the tensor count"), c.u(8, "the key/value count")
    c.need(n_kv * 13, f"{n_kv} key/value pairs")           # key length 8 + type 4 + value >= 1
    header = GGUFHeader(size=len(buf), little_endian=endian == "<")
    for i in range(n_kv):
        if values:
            key = c.string(f"key {i}")
            header.metadata[key] = c.value(c.u(4, f"key {i}'s type"), f"key {key!r}'s value")
            continue
        c.skip_string(f"key {i}")
        c.skip_value(c.u(4, f"key {i}'s type"), f"key {i}'s value")
    c.need(n_tensors * 24, f"{n_tensors} tensor descriptions")  # name 8 + dims 4 + type 4 + offset 8
    for i in range(n_tensors):
        name = c.string(f"tensor {i}'s name")
        n_dims = c.u(4, f"tensor {i}'s rank")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Bad(f"tensor {i} has {n_dims} dimensions")
        dims = [c.u(8, f"tensor {i}'s shape") for _ in range(n_dims)]
        elements = int(np.prod(dims, dtype=object))
        qtype = c.u(4, f"tensor {i}'s type")
        offset = c.u(8, f"tensor {i}'s offset")
        # The smallest quantizations take under half a byte per element, none less than 1/8.
        if offset > len(buf) or elements // 8 > len(buf):
            raise _Bad(f"tensor {i} ({elements} elements at offset {offset}) cannot fit in {len(buf)} bytes")
        header.tensors.append(TensorInfo(name, dims, qtype, offset))
    alignment = header.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment < 1:
        raise _Bad(f"general.alignment {alignment!r} is not a positive number")
    header.data_start = -(-c.pos // alignment) * alignment
    return header
