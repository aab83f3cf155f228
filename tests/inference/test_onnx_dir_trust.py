"""An exported ONNX directory may come from someone else: its onnx.json names only files
inside it, nothing in it links out, and a malformed manifest or a graph that does not match
config.json is a one-line error at load, never a traceback at the first prediction."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from gptclf.errors import GptclfError  # noqa: E402
from gptclf.inference import onnx as gonnx  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402


@pytest.fixture(scope="module")
def exported(random_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "graphs"
    gonnx.write_onnx_dir(Classifier.load(random_run, device="cpu"), out, int8=True)
    return out


def _copy(exported: Path, tmp_path: Path) -> Path:
    d = tmp_path / "graphs"
    shutil.copytree(exported, d)
    return d


def _edit_manifest(d: Path, **fields: object) -> None:
    info = json.loads((d / "onnx.json").read_text())
    info.update(fields)
    (d / "onnx.json").write_text(json.dumps(info))


def test_a_copied_directory_loads(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    for quantize in (None, "int8"):
        clf = Classifier.load(d, quantize=quantize)
        assert clf.backend == "onnxruntime" and clf.predict_proba(["a b"]).shape == (1, 2)


@pytest.mark.parametrize("name", ["../outside.onnx", "/tmp/outside.onnx", "sub/model.onnx", "..", ""])
def test_onnx_json_names_only_plain_files(exported: Path, tmp_path: Path, name: str) -> None:
    d = _copy(exported, tmp_path)
    shutil.copy2(d / "model.onnx", tmp_path / "outside.onnx")  # a loadable graph is there
    _edit_manifest(d, files={"fp32": name, "int8": name})
    with pytest.raises(GptclfError, match="not a plain file name"):
        Classifier.load(d)


@pytest.mark.parametrize("files", [5, None, ["model.onnx"], "model.onnx", {"fp32": 3}, {"fp32": None}])
def test_malformed_files_is_one_line_error(exported: Path, tmp_path: Path, files: object) -> None:
    d = _copy(exported, tmp_path)
    _edit_manifest(d, files=files)
    with pytest.raises(GptclfError) as e:
        Classifier.load(d)
    assert "onnx.json" in str(e.value) and "\n" not in e.value.message


@pytest.mark.parametrize("name", ["onnx.json", "model.int8.onnx", "model.onnx", "model.onnx.data"])
def test_no_file_may_link_out_of_the_directory(exported: Path, tmp_path: Path, name: str) -> None:
    d = _copy(exported, tmp_path)
    if not (d / name).exists():
        pytest.skip(f"this export has no {name}")
    outside = tmp_path / ("elsewhere-" + name)
    shutil.move(d / name, outside)
    os.symlink(outside, d / name)
    with pytest.raises(GptclfError, match="outside the model directory"):
        Classifier.load(d, quantize="int8" if name == "model.int8.onnx" else None)
