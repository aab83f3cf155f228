"""``gptclf export``: a self-contained copy of a model directory (the base model's weights
copied in, LoRA merged), or its ONNX graphs."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..files import read_json_object
from .load import read_run_config
from .save import TEST_SPLIT, save_run
from .weights import FULL


def export_merged(src: str | Path, out: str | Path) -> Path:
    """``gptclf export SRC OUT``: a full directory that needs no base model to load: a run
    that stores only its trained tensors gets the base's weights copied in, LoRA adapters
    are merged."""
    from ..inference.classifier import Classifier

    src, out = Path(src).expanduser(), Path(out).expanduser()
    cfg = read_run_config(src)
    clf = Classifier.load(src, device="cpu")
    extra = dict(cfg.extra)
    if cfg.lora:
        extra["lora_merged"] = {k: v for k, v in cfg.lora.items() if k != "saved"}
    extra["exported_from"] = str(src.resolve())
    merged = replace(cfg, lora=None, weights=FULL, base_weights=None, extra=extra)
    metrics = read_json_object(src / "metrics.json") if (src / "metrics.json").exists() else {}
    history = read_json_object(src / "history.json") if (src / "history.json").exists() else {}
    test_split = src / TEST_SPLIT  # the copy evaluates on the same data by default
    files = {TEST_SPLIT: test_split.read_text(encoding="utf-8")} if test_split.is_file() else None
    save_run(out, clf.model, clf.tokenizer, merged, metrics, history, update_latest_link=False, files=files)
    for plot in ("loss-plot.png", "accuracy-plot.png"):
        if (src / plot).exists() and not (out / plot).exists():
            shutil.copy2(src / plot, out / plot)
    return out


def export_onnx(src: str | Path, out: str | Path, int8: bool = True) -> Path:
    """``gptclf export --format onnx SRC OUT``: the classifier as ONNX graphs (fp32, and int8
    unless ``int8=False``) with the files that describe how to feed them
    (see :mod:`gptclf.inference.onnx`)."""
    from ..inference import onnx
    from ..inference.classifier import Classifier

    onnx.require_onnx()
    src = Path(src).expanduser()
    clf = Classifier.load(src, device="cpu", backend="torch")
    return onnx.write_onnx_dir(clf, Path(out).expanduser(), int8=int8, source=src)
