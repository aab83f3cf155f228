"""A model directory may come from someone else. Its JSON files are
read with a bound, no file of it may be a link out of it, and a LoRA run's base model is
checked (a local path or a gptclf preset, same architecture, fingerprint required) before
anything is loaded or downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptclf.config import RunConfig
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _link(path: Path, target: Path | str) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_link_out_of_the_directory_is_refused(run_copy: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"elsewhere-{name}"
    shutil.copy(run_copy / name, outside)  # a perfectly valid file, but not the directory's own
    _link(run_copy / name, outside)
    with pytest.raises(GptclfError, match="outside the model directory"):
        Classifier.load(run_copy, device="cpu")


def test_config_linked_to_dev_zero_is_refused_at_once(run_copy: Path) -> None:
    _link(run_copy / "config.json", "/dev/zero")
    with pytest.raises(GptclfError, match="outside the model directory"):
        Classifier.load(run_copy, device="cpu")


def test_a_link_inside_the_directory_is_fine(run_copy: Path) -> None:
    (run_copy / "model.safetensors").rename(run_copy / "weights.bin")
    _link(run_copy / "model.safetensors", "weights.bin")
    assert Classifier.load(run_copy, device="cpu").predict(["hello"])[0]["label"]


def test_served_metrics_linked_to_dev_zero_are_ignored(tiny_classifier: Classifier, run_copy: Path) -> None:
    pytest.importorskip("fastapi")
    from gptclf.inference.serve.app import model_info

    _link(run_copy / "metrics.json", "/dev/zero")
    clf = SimpleNamespace(labels=tiny_classifier.labels, max_length=tiny_classifier.max_length,
                          config=tiny_classifier.config, directory=run_copy)
    assert model_info(clf)["metrics"] == {}


def test_tokenizer_json_linked_outside_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    from gptclf.tokenizers import tokenizer_from_config

    secret = tmp_path / "secret-tokenizer.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(secret))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cfg = {"type": "hf-tokenizers", "file": "tokenizer.json", "pad_id": 0}
    shutil.copy(secret, model_dir / "tokenizer.json")
    assert tokenizer_from_config(cfg, model_dir).encode("a") == [0]
    _link(model_dir / "tokenizer.json", secret)
    with pytest.raises(GptclfError, match="outside the model directory"):
        tokenizer_from_config(cfg, model_dir)


# ----------------------------------------------------------------------- LoRA bases


def _lora_cfg(base: str, fingerprint: object = None, arch: dict | None = None, spelling: str = "new") -> RunConfig:
    """A LoRA run's config.json as loaders see it, its base named in ``base_weights`` or, as
    older LoRA directories do, in ``lora.base`` / ``lora.base_fingerprint``."""
    from gptclf.models import registry

    arch = arch or registry.find_preset("smollm2-135m")[2].config.to_dict()
    lora, ref = {"rank": 4, "alpha": 8, "targets": ["attention"]}, {"name": base}
    if fingerprint is not None:
        ref["fingerprint"] = fingerprint
    d = {"format": "gptclf/1", "architecture": arch, "labels": ["a", "b"], "tokenizer": {"type": "gpt2"},
         "max_length": 8, "pooling": "last-nonpad", "base_model": {"name": base, "init": "pretrained"}}
    if spelling == "old":
        d["lora"] = {**lora, "base": base, **({"base_fingerprint": fingerprint} if fingerprint is not None else {})}
    else:
        d.update(lora=lora, weights="trained-only", base_weights=ref)
    return RunConfig.from_json(d)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import gptclf.loading as loading

    def refuse(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the base was loaded before it was checked")

    monkeypatch.setattr(loading, "load_backbone", refuse)


@pytest.mark.parametrize("base,fingerprint,match", [
    ("attacker/huge-model", {"parameters": 1, "sha256_sample": "x"}, "neither a local path nor a gptclf preset"),
    ("gpt2-small", {"parameters": 1, "sha256_sample": "x"}, "different architecture"),
    ("openai-community/gpt2", {"parameters": 1, "sha256_sample": "x"}, "different architecture"),
    ("smollm2-135m", None, "no fingerprint"),
    ("smollm2-135m", "", "no fingerprint"),
])
@pytest.mark.parametrize("spelling", ["new", "old"])
def test_lora_base_is_checked_before_anything_loads(no_loading: None, tmp_path: Path, base: str,
                                                    fingerprint: object, match: str, spelling: str) -> None:
    from safetensors.torch import save_file

    from gptclf.rundir.weights import load_classifier_backbone

    save_file({}, str(tmp_path / "model.safetensors"))  # no adapters: the base is refused before they matter
    with pytest.raises(GptclfError, match=match):
        load_classifier_backbone(tmp_path, _lora_cfg(base, fingerprint, spelling=spelling))


def test_lora_base_that_is_a_preset_of_the_same_shape_passes_the_name_check() -> None:
    from gptclf.rundir.base import check_base_name

    cfg = _lora_cfg("smollm2-135m")
    check_base_name(Path("d"), "smollm2-135m", cfg.architecture)
    check_base_name(Path("d"), "SmolLM2", cfg.architecture)  # an alias
