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


def _set_labels(d: Path, labels: list[str]) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["labels"] = labels
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("labels", [["a", "b", "c"], ["a", "b", "c", "d", "e"]])
def test_label_count_must_match_the_graph(exported: Path, tmp_path: Path, labels: list[str]) -> None:
    d = _copy(exported, tmp_path)
    _set_labels(d, labels)
    for quantize in (None, "int8"):
        with pytest.raises(GptclfError, match=f"config.json has {len(labels)} labels"):
            Classifier.load(d, quantize=quantize)


def test_a_one_column_graph_is_not_broadcast_to_every_label(exported: Path, tmp_path: Path,
                                                            micro_gpt2_config: Path) -> None:
    """A graph whose output is [batch, 1] would be broadcast to config.json's two labels."""
    from helpers import random_classifier

    d = _copy(exported, tmp_path)
    for f in d.glob("model.onnx*"):
        f.unlink()
    gonnx.export_graph(random_classifier(micro_gpt2_config, labels=("only",)), d / "model.onnx")
    with pytest.raises(GptclfError, match="outputs 1 probabilities per text but config.json has 2 labels"):
        Classifier.load(d)


def test_pad_id_outside_the_vocabulary_is_refused(exported: Path, tmp_path: Path) -> None:
    """A tokenizer.json run whose pad id is past the embedding (50,257 rows): ORT would index
    out of range at the first padded batch."""
    from helpers import write_tiny_tokenizer

    d = _copy(exported, tmp_path)
    write_tiny_tokenizer(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tokenizer"] = {"type": "hf-tokenizers", "file": "tokenizer.json", "pad_id": 60000}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="pad id 60000 is outside the vocabulary of 50257"):
        Classifier.load(d)
    cfg["tokenizer"]["pad_id"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    assert Classifier.load(d).tokenizer.pad_id == 0
