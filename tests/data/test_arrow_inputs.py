"""Issue 15: Parquet, Arrow/Feather and a folder saved by Hugging Face ``datasets`` read through
the one table reader, for training data and for ``predict --input``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptclf import GptclfError
from gptclf.data.tables import Table, read_table
from helpers import load_data

pa = pytest.importorskip("pyarrow")
import pyarrow.feather  # noqa: E402, F401  (submodules used as pa.feather, pa.ipc, pa.parquet)
import pyarrow.ipc  # noqa: E402, F401
import pyarrow.parquet  # noqa: E402, F401

TEXTS = [f"text number {i}" for i in range(30)]
LABELS = [i % 3 for i in range(30)]  # ClassLabel ints in a datasets folder
NAMES = ["sports", "cooking", "tech"]


def _table():  # noqa: ANN202
    return pa.table({"text": TEXTS, "label": [NAMES[x] for x in LABELS], "id": list(range(30))})


def _hf_folder(root: Path) -> Path:
    """What ``Dataset.save_to_disk`` writes: Arrow stream files, state.json, dataset_info.json."""
    root.mkdir(parents=True)
    table = pa.table({"text": TEXTS, "label": pa.array(LABELS, pa.int64())})
    for i, part in enumerate((table.slice(0, 16), table.slice(16))):
        with pa.ipc.new_stream(root / f"data-0000{i}-of-00002.arrow", part.schema) as w:
            w.write_table(part)
    (root / "state.json").write_text(json.dumps({"_data_files": [
        {"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}], "_split": "train"}))
    (root / "dataset_info.json").write_text(json.dumps({"features": {
        "text": {"dtype": "string", "_type": "Value"}, "label": {"names": NAMES, "_type": "ClassLabel"}}}))
    return root


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"parquet": tmp_path / "d.parquet", "feather": tmp_path / "d.feather", "hf": _hf_folder(tmp_path / "ds")}
    pa.parquet.write_table(_table(), out["parquet"], row_group_size=7)
    pa.feather.write_feather(_table(), out["feather"])
    return out


def test_every_arrow_source_reads_the_same_examples(files: dict[str, Path]) -> None:
    want = [(t, NAMES[lab]) for t, lab in zip(TEXTS, LABELS)]
    for kind, path in files.items():
        got = read_table(path)
        assert [(e.text, e.label) for e in got] == want, kind
        assert [e.line for e in got] == list(range(1, 31)), kind
    s = load_data(str(files["hf"]))
    assert s.labels == sorted(NAMES) and len(s.train) + len(s.val) + len(s.test) == 30


def test_columns_are_known_before_reading(files: dict[str, Path]) -> None:
    with Table(files["parquet"]) as t:
        assert t.columns == ["text", "label", "id"] and t.format == "parquet"
    with pytest.raises(GptclfError, match="no text column 'body'"):
        read_table(files["feather"], "body")


def test_folders_that_are_not_a_dataset_are_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(GptclfError, match="is a directory"):
        Table(tmp_path / "plain")
    dd = tmp_path / "dd"
    _hf_folder(dd / "train")
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(GptclfError, match=r"several splits \['train'\]"):
        Table(dd)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(GptclfError, match="cannot read it as parquet"):
        Table(bad)


def test_predict_file_reads_parquet(files: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    from gptclf.inference.batch_files import predict_file

    class Stub:
        labels = ["a", "b"]

        def predict_proba(self, texts, batch_size):  # noqa: ANN001, ANN201
            return np.tile([0.25, 0.75], (len(texts), 1))

    res = predict_file(Stub(), files["parquet"], tmp_path / "out.jsonl", chunk_size=8)
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert res.rows == 30 and [r["id"] for r in rows] == list(range(30))
    assert all(r["predicted_label"] == "b" for r in rows)


@pytest.mark.parametrize("state", ["[1, 2]", "3", '"x"', "null"])
def test_a_state_json_that_is_not_an_object_is_refused(tmp_path: Path, state: str) -> None:
    d = _hf_folder(tmp_path / "ds")
    (d / "state.json").write_text(state)
    with pytest.raises(GptclfError, match="is not a datasets state.json"):
        Table(d)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00002.arrow"}]}))
    (d / "dataset_info.json").write_text("[]")  # an info that is not an object: no class names, no traceback
    assert len(read_table(d)) == 16


# Read in a child process: before the fix some garbled streams crashed pyarrow (a segfault),
# which would take the test session down with them instead of failing one test.
_READ_ALL = """
import sys
from gptclf.data.tables import read_table
from gptclf.errors import GptclfError
for path in sys.argv[1:]:
    try:
        read_table(path)
        print("rows")
    except GptclfError as e:
        print("error" if "\\n" not in e.message else "multi-line")
"""


def test_garbled_bytes_mid_stream_are_one_line(tmp_path: Path) -> None:
    import random
    import subprocess
    import sys

    t = pa.table({"text": [f"text number {i} " * 5 for i in range(5000)], "label": ["a", "b"] * 2500})
    clean = tmp_path / "s.arrow"
    with pa.ipc.new_stream(str(clean), t.schema) as w:
        for b in t.to_batches(max_chunksize=500):
            w.write_batch(b)
    data = clean.read_bytes()
    paths = []
    for seed in range(16):  # 64 random bytes somewhere in the middle half of the file
        d, r = bytearray(data), random.Random(seed)
        start = r.randrange(len(d) // 4, 3 * len(d) // 4)
        d[start:start + 64] = bytes(r.randrange(256) for _ in range(64))
        paths.append(tmp_path / f"g{seed}.arrow")
        paths[-1].write_bytes(bytes(d))
    p = subprocess.run([sys.executable, "-c", _READ_ALL, *map(str, paths)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["error"] * len(paths), p.stdout
