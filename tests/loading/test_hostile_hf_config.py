"""A Hugging Face directory's config.json may come from someone else: values no real model has
(more layers than the weights hold, a tensor missing, gemma3 sliding_window_pattern 0, a
negative query_pre_attn_scalar or norm epsilon, NaN soft-capping) are refused at load with one
line naming the file and the key, never a KeyError/ZeroDivisionError traceback or a model whose
logits are NaN. A run's config.json temperature is bounded the same way."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.loading import load_backbone

from helpers import tiny_gpt2_dir

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_gemma_families import make_hf  # noqa: E402


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile-hf")
    make_hf(base / "gemma2", "gemma2")
    make_hf(base / "gemma3", "gemma3")
    return {"gpt2": tiny_gpt2_dir(base / "gpt2"), "gemma2": base / "gemma2", "gemma3": base / "gemma3"}


def _edited(src: Path, dst: Path, drop: tuple[str, ...] = (), **values: Any) -> Path:
    shutil.copytree(src, dst)
    cfg = {k: v for k, v in json.loads((dst / "config.json").read_text()).items() if k not in drop}
    (dst / "config.json").write_text(json.dumps({**cfg, **values}))
    return dst


CASES = {
    "gemma3 pattern 0": ("gemma3", ("layer_types",), {"sliding_window_pattern": 0}, "sliding_window_pattern=0"),
    "negative query_pre_attn_scalar": ("gemma2", (), {"query_pre_attn_scalar": -4}, "query_pre_attn_scalar=-4"),
    "negative rms_norm_eps": ("gemma2", (), {"rms_norm_eps": -1.0}, "rms_norm_eps=-1.0"),
    "zero gpt2 layer_norm_epsilon": ("gpt2", (), {"layer_norm_epsilon": 0.0}, "layer_norm_epsilon=0.0"),
    "NaN soft-capping": ("gemma2", (), {"attn_logit_softcapping": float("nan")}, "attn_logit_softcapping=nan"),
    "negative final soft-capping": ("gemma2", (), {"final_logit_softcapping": -30.0}, "final_logit_softcapping"),
    "negative rope_theta": ("gemma2", (), {"rope_theta": -1.0}, "rope_theta=-1.0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_values_are_refused_naming_file_and_key(hf_dirs: dict[str, Path], tmp_path: Path,
                                                        case: str) -> None:
    family, drop, values, key = CASES[case]
    d = _edited(hf_dirs[family], tmp_path / "m", drop, **values)
    with pytest.raises(GptclfError) as e:
        load_backbone(str(d))
    first = e.value.message
    assert "\n" not in first and str(d / "config.json") in first and key in first


def test_more_layers_than_the_weights_is_refused(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    d = _edited(hf_dirs["gpt2"], tmp_path / "m", n_layer=3)  # the file holds 2
    with pytest.raises(GptclfError, match=r"no tensor 'h\.2\.[a-z_0-9.]+', which config.json calls for \(3 layers\)"):
        load_backbone(str(d))


def test_a_missing_tensor_is_refused(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    d = _edited(hf_dirs["gpt2"], tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    del sd["transformer.h.0.attn.c_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GptclfError, match=r"no tensor 'h\.0\.attn\.c_proj\.weight'"):
        load_backbone(str(d))


def test_the_untouched_directories_still_load(hf_dirs: dict[str, Path]) -> None:
    for d in hf_dirs.values():
        assert load_backbone(str(d)).model is not None


@pytest.mark.parametrize("t", [1e-40, 1e-4, 2e3, 1e40])
def test_a_run_temperature_out_of_bounds_is_refused(random_run: Path, tmp_path: Path, t: float) -> None:
    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "temperature": t}))
    with pytest.raises(GptclfError, match="temperature .* is not a number between 0.001 and 1000"):
        Classifier.load(run)


@pytest.mark.parametrize("t", [1e-3, 0.05, 20.0, 1e3])
def test_a_run_temperature_in_bounds_loads(random_run: Path, tmp_path: Path, t: float) -> None:
    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "temperature": t}))
    assert Classifier.load(run).temperature == t
