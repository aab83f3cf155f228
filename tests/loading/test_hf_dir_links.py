"""A Hugging Face model directory given as --model may come from someone else: its config.json
and model.safetensors.index.json are read with a size bound and never through a link out of
the directory (``/dev/zero``, another user's file). The hub cache's own layout, snapshot
files linking to ``../../blobs/``, still loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gptclf.errors import GptclfError
from gptclf.loading import load_backbone


def _copy(tiny_gpt2: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_gpt2, d)
    return d


def _link_out(d: Path, name: str, target: Path | str) -> None:
    (d / name).unlink(missing_ok=True)
    os.symlink(target, d / name)


@pytest.mark.parametrize("target", ["copy", "/dev/zero"])
def test_config_json_linked_out_is_refused(tiny_gpt2: Path, tmp_path: Path, target: str) -> None:
    d = _copy(tiny_gpt2, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.copy2(d / "config.json", outside)  # a valid config: only the link is wrong
    _link_out(d, "config.json", outside if target == "copy" else target)
    with pytest.raises(GptclfError, match="outside the model directory"):
        load_backbone(str(d))


def test_an_oversized_config_json_is_refused(tiny_gpt2: Path, tmp_path: Path) -> None:
    d = _copy(tiny_gpt2, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg) + " " * (2 << 20))
    with pytest.raises(GptclfError, match="larger than 1 MB"):
        load_backbone(str(d))


def _sharded(d: Path) -> None:
    """model.safetensors as one shard named by an index."""
    shutil.move(d / "model.safetensors", d / "model-00001-of-00001.safetensors")
    from safetensors import safe_open

    with safe_open(str(d / "model-00001-of-00001.safetensors"), "pt") as f:
        names = list(f.keys())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))


@pytest.mark.parametrize("what", ["index", "shard"])
def test_index_and_shards_linked_out_are_refused(tiny_gpt2: Path, tmp_path: Path, what: str) -> None:
    d = _copy(tiny_gpt2, tmp_path)
    _sharded(d)
    assert load_backbone(str(d)).model is not None  # the sharded copy loads
    name = "model.safetensors.index.json" if what == "index" else "model-00001-of-00001.safetensors"
    shutil.move(d / name, tmp_path / name)
    _link_out(d, name, tmp_path / name)
    with pytest.raises(GptclfError, match="outside the model directory"):
        load_backbone(str(d))


def test_the_hub_cache_layout_still_loads(tiny_gpt2: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--someone--tiny"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in tiny_gpt2.iterdir():
        shutil.copy2(f, repo / "blobs" / f"blob-{f.name}")
        os.symlink(Path("../../blobs") / f"blob-{f.name}", snap / f.name)
    assert load_backbone(str(snap)).model is not None
