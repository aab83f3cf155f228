"""Small run directories: only the tensors training changed, and a reference to the base model.

A run on a base that can be rebuilt by name (here a local Hugging Face directory, or a GGUF
file) stores only its trained tensors and the base's name and fingerprint; loading rebuilds
the base, checks it and lays the tensors over it, which must give bit for bit what a
self-contained save gives. A changed or missing base is refused with a clear error;
``--self-contained`` and ``gptclf export --self-contained`` give full copies that load with
the base gone; a randomly initialised base is saved whole.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclf.config import TrainConfig
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.training.recipe import run_training

from helpers import FIXTURES, env_with, tiny_gpt2_dir, write_gpt2_config_only

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::gptclf.errors.DataWarning")]

TEXTS = ["WINNER!! Claim your prize now", "see you at 6", "Ok lar... Joking wif u oni...", ""]
# long_text: at 48 tokens more than 5 % of SMS texts are long, and the default would read them in windows.
OPTIONS = dict(epochs=1, eval_freq=1000, max_length=48, long_text="truncate", lr=1e-3, progress=False)


def _train(base: Path, data: Path, out: Path, **kw) -> Path:
    return run_training(TrainConfig(model=str(base), data=str(data), out=str(out), **{**OPTIONS, **kw}),
                        log=lambda s: None)


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _probs(run: Path) -> np.ndarray:
    return Classifier.load(run, device="cpu").predict_proba(TEXTS)


def _gptclf(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptclf", *argv], capture_output=True, text=True,
                          env=env_with(HF_HUB_OFFLINE="1"), timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, small_sms: Path) -> dict[str, Path]:
    """One base directory, and the same run (last block) saved small and self-contained."""
    root = tmp_path_factory.mktemp("small-runs")
    base = tiny_gpt2_dir(root / "base")
    return {"base": base, "small": _train(base, small_sms, root / "small"),
            "full": _train(base, small_sms, root / "full", self_contained=True)}


def _moved_base(runs: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the base and of the small run pointing at it (tests then damage the copy)."""
    base, run = tmp_path / "base", tmp_path / "run"
    shutil.copytree(runs["base"], base)
    shutil.copytree(runs["small"], run)
    cfg = _config(run)
    cfg["base_weights"]["name"] = str(base)
    (run / "config.json").write_text(json.dumps(cfg))
    return base, run


def test_small_run_holds_only_the_trained_tensors(runs: dict[str, Path]) -> None:
    from gptclf.config import TrainConfig
    from gptclf.loading import load_backbone
    from gptclf.training.recipe import build_classifier

    cfg = _config(runs["small"])
    assert cfg["weights"] == "trained-only" and cfg["trainable"] == "last_block"
    assert cfg["base_weights"]["name"] == str(runs["base"].resolve())
    assert cfg["base_weights"]["fingerprint"]["parameters"] > 0
    # The names saved are exactly those that train: the last block, the final norm, the head.
    cfg_ = TrainConfig(model=str(runs["base"]), trainable="last_block").resolved()
    model, _ = build_classifier(load_backbone(str(runs["base"])), cfg_, 2)
    trained = {k for k, p in model.backbone.named_parameters() if p.requires_grad}
    saved = load_file(str(runs["small"] / "model.safetensors"))
    assert set(saved) == trained and any(k.startswith("trf_blocks.1.") for k in saved)
    small, full = (runs[k] / "model.safetensors" for k in ("small", "full"))
    assert small.stat().st_size < full.stat().st_size / 20
    m = json.loads((runs["small"] / "metrics.json").read_text())["weights"]
    assert m["mode"] == "trained-only" and m["base"] == str(runs["base"].resolve())
    assert m["model_bytes"] < small.stat().st_size < m["model_bytes"] + 20_000  # + the header
    assert m["full_model_bytes"] < full.stat().st_size < m["full_model_bytes"] + 20_000
    assert "not copied" in (runs["small"] / "report.html").read_text()
    # The self-contained save holds every tensor, and says nothing about a base.
    assert "weights" not in _config(runs["full"]) and "base_weights" not in _config(runs["full"])
    assert json.loads((runs["full"] / "metrics.json").read_text())["weights"]["mode"] == "full"


def test_small_run_predicts_what_the_self_contained_run_predicts_bit_for_bit(runs: dict[str, Path]) -> None:
    small, full = _probs(runs["small"]), _probs(runs["full"])
    assert np.array_equal(small, full)
    saved = load_file(str(runs["small"] / "model.safetensors"))
    whole = load_file(str(runs["full"] / "model.safetensors"))
    assert all(torch.equal(saved[k], whole[k]) for k in saved)


def test_a_changed_base_weight_file_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    base, run = _moved_base(runs, tmp_path)
    assert np.array_equal(_probs(run), _probs(runs["small"]))  # the copy itself is fine
    weights = load_file(str(base / "model.safetensors"))
    name = next(k for k in weights if k.endswith("h.0.attn.c_attn.weight"))
    weights[name][0, 0] += 1e-3  # one value of a frozen block: a sample would miss it
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GptclfError, match="fingerprint mismatch") as e:
        Classifier.load(run, device="cpu")
    assert str(base) in e.value.message and "gptclf export" in (e.value.hint or "")
    r = _gptclf("predict", "--model", str(run), "hello")
    assert r.returncode == 2 and "fingerprint mismatch" in r.stderr and "Traceback" not in r.stderr


def test_a_missing_base_is_a_clear_error(runs: dict[str, Path], tmp_path: Path) -> None:
    base, run = _moved_base(runs, tmp_path)
    shutil.rmtree(base)
    with pytest.raises(GptclfError, match="path does not exist") as e:
        Classifier.load(run, device="cpu")
    assert str(base) in e.value.message and "gptclf export" in (e.value.hint or "")
    r = _gptclf("evaluate", "--model", str(run))
    assert r.returncode == 2 and str(base) in r.stderr and "Traceback" not in r.stderr


def test_a_trained_only_config_without_its_base_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["small"], run)
    cfg = _config(run)
    del cfg["base_weights"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="base_weights"):
        Classifier.load(run, device="cpu")
    cfg["base_weights"] = {"name": str(runs["base"])}
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="no fingerprint"):
        Classifier.load(run, device="cpu")


@pytest.mark.parametrize("edit", ["unknown name", "wrong shape"])
def test_saved_tensors_are_checked_before_the_base_loads(runs: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, edit: str) -> None:
    import gptclf.loading as loading

    run = tmp_path / "run"
    shutil.copytree(runs["small"], run)
    saved = load_file(str(run / "model.safetensors"))
    if edit == "unknown name":
        saved["trf_blocks.9.att.qkv.weight"] = torch.zeros(2, 2)
    else:
        saved["out_head.weight"] = torch.zeros(3, 64)
    save_file(saved, str(run / "model.safetensors"))
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the base was loaded first"))
    with pytest.raises(GptclfError, match="disagree"):
        Classifier.load(run, device="cpu")


def test_self_contained_and_export_load_with_the_base_gone(runs: dict[str, Path], small_sms: Path,
                                                            tmp_path: Path) -> None:
    base, run = _moved_base(runs, tmp_path)
    own = _train(base, small_sms, tmp_path / "own", self_contained=True)
    exported = tmp_path / "exported"
    r = _gptclf("export", "--self-contained", str(run), str(exported))
    assert r.returncode == 0, r.stderr
    cfg = _config(exported)
    assert "weights" not in cfg and "base_weights" not in cfg and cfg["exported_from"] == str(run.resolve())
    shutil.rmtree(base)
    expected = _probs(runs["small"])
    assert np.array_equal(_probs(exported), expected)
    assert np.array_equal(_probs(own), expected)


def test_onnx_and_hf_exports_work_from_a_small_run(runs: dict[str, Path], tmp_path: Path) -> None:
    from gptclf.rundir.export import export_onnx
    from gptclf.rundir.hf_export import export_hf

    pytest.importorskip("onnxruntime")
    export_onnx(runs["small"], tmp_path / "onnx", int8=False)
    onnx = Classifier.load(tmp_path / "onnx", backend="onnxruntime").predict_proba(TEXTS)
    np.testing.assert_allclose(onnx, _probs(runs["small"]), atol=1e-5, rtol=0)
    export_hf(runs["small"], tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size > 20 * (
        runs["small"] / "model.safetensors").stat().st_size


def test_a_random_init_run_is_saved_self_contained(tmp_path: Path, small_sms: Path) -> None:
    tiny = write_gpt2_config_only(tmp_path / "cfg", n_layer=2)
    logs: list[str] = []
    out = run_training(TrainConfig(model=str(tiny), init="random", data=str(small_sms), out=str(tmp_path / "r"),
                                   trainable="last_block", **OPTIONS), log=logs.append)
    assert "weights" not in _config(out)
    assert json.loads((out / "metrics.json").read_text())["weights"]["mode"] == "full"
    assert any("randomly initialised" in line and "whole classifier" in line for line in logs)
    assert any("(self-contained)" in line for line in logs if line.startswith("saved run"))
    shutil.rmtree(tiny)
    assert Classifier.load(out, device="cpu").predict_proba(TEXTS).shape == (len(TEXTS), 2)


def test_a_run_of_the_whole_model_is_saved_self_contained(runs: dict[str, Path], small_sms: Path,
                                                          tmp_path: Path) -> None:
    out = _train(runs["base"], small_sms, tmp_path / "all", trainable="all")
    assert "weights" not in _config(out)  # everything trained: nothing to refer to


def test_an_old_run_directory_is_full(tmp_path: Path) -> None:
    clf = Classifier.load(FIXTURES / "run-0.1.0", device="cpu")
    assert clf.run_config.weights == "full" and clf.run_config.base_weights is None
    assert "weights" not in clf.run_config.to_json()


def test_a_gguf_base_is_referred_to_and_checked(tmp_path: Path, small_sms: Path) -> None:
    pytest.importorskip("gguf")
    from loading.test_gguf import tiny_hf_model, write_gguf

    _, sd, cfg = tiny_hf_model(emb=32, heads=4, kv=2, hidden=48, tie=True)
    gguf_file = tmp_path / "tiny.gguf"
    write_gguf(gguf_file, sd, cfg)
    run = _train(gguf_file, small_sms, tmp_path / "run", trainable="1")
    full = _train(gguf_file, small_sms, tmp_path / "full", trainable="1", self_contained=True)
    assert _config(run)["base_weights"]["name"] == str(gguf_file.resolve())
    assert np.array_equal(_probs(run), _probs(full))
    sd["model.layers.0.mlp.down_proj.weight"][3, 5] += 1e-3
    write_gguf(gguf_file, sd, cfg)
    with pytest.raises(GptclfError, match="fingerprint mismatch"):
        Classifier.load(run, device="cpu")


def test_fingerprint_detects_one_changed_value_and_reads_the_older_sampled_kind(runs: dict[str, Path]) -> None:
    from gptclf.loading import load_backbone
    from gptclf.rundir.base import base_fingerprint, fingerprint_matches, sampled_fingerprint

    model = load_backbone(str(runs["base"])).model
    fp, old = base_fingerprint(model), sampled_fingerprint(model)
    assert fingerprint_matches(model, fp) and fingerprint_matches(model, old)
    assert not fingerprint_matches(model, {**fp, "sha256_sample": old["sha256_sample"]})  # an edited record
    assert not fingerprint_matches(model, None) and not fingerprint_matches(model, {})
    with torch.no_grad():
        model.trf_blocks[0].ff.fc.weight[1, 1] += 1e-4
    assert not fingerprint_matches(model, fp)
