"""Resuming checks the base weights' fingerprint, and a damaged
checkpoint (any field of run.json or checkpoint.json, the tensor file) is a clear error.

The damage is a property-based fuzz (hypothesis): each example copies one real checkpoint,
damages one thing in it, and resumes. The only outcomes allowed are a GptclfError or a
resume that gets as far as training (the damage was harmless); anything else (a KeyError,
a TypeError, a hang) is a bug. Counted in the hardening note: see the test ids.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gptclf.config import TrainConfig
from gptclf.errors import GptclfError
from gptclf.training import state as checkpoint
from gptclf.training.loop import Trainer
from gptclf.training.recipe import resume_training, run_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import examples, tiny_gpt2_dir as write_tiny_gpt2  # noqa: E402


class Reached(Exception):
    """Raised in place of training once a resume has restored everything."""


@pytest.fixture(scope="module")
def data(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    path = tmp_path_factory.mktemp("ckpt-data") / "small.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for label in ("ham", "spam"):
            for text in [t for lab, t in rows if lab == label][:60]:
                f.write(json.dumps({"text": text[:80], "label": label}) + "\n")
    return path


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, Path]:
    """(base model dir, <out>.partial of a run that crashed right after its first checkpoint)."""
    root = tmp_path_factory.mktemp("ckpt")
    base = write_tiny_gpt2(root / "base", n_embd=32, n_layer=2, n_head=2, n_positions=128)
    out = root / "run"
    real_save = checkpoint.Checkpointer.save

    def crash(self, tensors, state):  # noqa: ANN001
        real_save(self, tensors, state)
        raise RuntimeError("simulated crash")

    mp = pytest.MonkeyPatch()
    mp.setattr(checkpoint.Checkpointer, "save", crash)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_training(TrainConfig(model=str(base), data=str(data), trainable="all", lr=1e-3, epochs=2,
                                     batch_size=8, checkpoint_every=2, out=str(out), progress=False),
                         log=lambda s: None)
    finally:
        mp.undo()
    return base, checkpoint.partial_dir(out)


def _copy(partial: Path, dest: Path) -> Path:
    """A fresh copy of the checkpoint whose run saves next to it."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(partial, dest / "run.partial")
    info = json.loads((dest / "run.partial" / "run.json").read_text())
    info["out"] = info["train"]["out"] = str(dest / "run")
    (dest / "run.partial" / "run.json").write_text(json.dumps(info))
    return dest / "run.partial"


def _resume(partial: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(self: Trainer):  # noqa: ANN202 - the restore happened; training is not the point
        raise Reached

    monkeypatch.setattr(Trainer, "fit", stop)
    resume_training(partial, log=lambda s: None, progress=False)


def test_an_intact_checkpoint_resumes(interrupted: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Reached):
        _resume(_copy(interrupted[1], tmp_path), monkeypatch)


def test_resume_refuses_a_changed_base_model(interrupted: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base, partial = interrupted
    work = _copy(partial, tmp_path / "w")
    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    info = json.loads((work / "run.json").read_text())
    info["train"]["model"] = str(moved)
    (work / "run.json").write_text(json.dumps(info))
    with pytest.raises(Reached):  # the same weights elsewhere: fine
        _resume(work, monkeypatch)
    write_tiny_gpt2(moved, n_embd=32, n_layer=2, n_head=2, n_positions=128, seed=1)  # same shapes, new weights
    with pytest.raises(GptclfError, match="base model's weights have changed"):
        _resume(work, monkeypatch)
    del info["base_fingerprint"]  # deleting the fingerprint does not switch the check off
    (work / "run.json").write_text(json.dumps(info))
    with pytest.raises(GptclfError, match="no fingerprint of the base model"):
        _resume(work, monkeypatch)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=6)


def _damage(partial: Path, target: str, how: str, key_pick: int, value: object, cut: float) -> None:
    if target == "tensors":
        path = next(partial.glob("checkpoint-*.safetensors"))
    else:
        path = partial / target
    raw = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(raw[: int(len(raw) * cut)])
    elif how == "flip":
        i = int((len(raw) - 1) * cut)
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    elif target == "tensors":  # remove or reshape one tensor
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        name = sorted(tensors)[key_pick % len(tensors)]
        if how == "drop_key":
            del tensors[name]
        else:
            tensors[name] = tensors[name].reshape(-1)[:1].clone()
        save_file(tensors, str(path), metadata={"format": checkpoint.CHECKPOINT_FORMAT})
    else:
        obj = json.loads(raw)
        keys = sorted(obj)
        key = keys[key_pick % len(keys)]
        if how == "drop_key":
            del obj[key]
        elif how == "set_value":
            obj[key] = value
        else:  # a value inside a nested field
            inner = obj[key]
            if isinstance(inner, dict) and inner:
                inner[sorted(inner)[key_pick % len(inner)]] = value
            else:
                obj[key] = [value]
        path.write_text(json.dumps(obj, allow_nan=True))


@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.sampled_from(["checkpoint.json", "run.json", "tensors"]),
       how=st.sampled_from(["delete", "truncate", "flip", "drop_key", "set_value", "set_nested"]),
       key_pick=st.integers(0, 100), value=JSON, cut=st.floats(0, 1))
def test_damaged_checkpoints_are_clear_errors(interrupted: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, target: str, how: str,
                                              key_pick: int, value: object, cut: float) -> None:
    work = _copy(interrupted[1], tmp_path / "fuzz")
    _damage(work, target, how, key_pick, value, cut)
    try:
        _resume(work, monkeypatch)
    except (GptclfError, Reached):
        pass
