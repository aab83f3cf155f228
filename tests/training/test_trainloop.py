"""Training controls, checkpoint/resume (killed and Ctrl-C'd processes), multi-process DDP."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclf.training.state import flatten_optimizer_state, partial_dir, unflatten_optimizer_state, write_run_info
from gptclf.tasks.single_label import class_weights, step_loss
from gptclf.training.controls import EarlyStopping, stopper_for
from gptclf.errors import GptclfError
from gptclf.training.schedule import lr_factor, warmup_steps
from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training

from helpers import env_with, sms_head_csv

QUALITY = ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss")


# One intra-op thread here and in the subprocesses (OMP_NUM_THREADS=1 below): the runs
# compared bit for bit use the same arithmetic, and tiny models on a shared 2-core
# machine run several times faster without threads fighting over the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_csv(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 SMS messages as a CSV: 140 train / 20 val / 40 test, both classes."""
    return sms_head_csv(sms_file, tmp_path_factory.mktemp("data") / "small.csv", 200)


def _opts(model: Path, data: Path, out: Path, **kw) -> dict:
    opts = dict(model=str(model), data=str(data), balance="none", epochs=2, eval_freq=5, lr=1e-3,
                out=str(out), progress=False)
    opts.update(kw)
    return opts


def _train(model: Path, data: Path, out: Path, **kw) -> Path:
    return run_training(TrainConfig(**_opts(model, data, out, **kw)), log=lambda s: None)


def _cli_args(model: Path, data: Path, out: Path, **kw) -> list[str]:
    args = []
    for k, v in _opts(model, data, out, **kw).items():
        if k == "progress":
            continue
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args + ["--quiet"]


def _gptclf(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptclf", *args], env=env_with(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _same_run(a: Path, b: Path, exact: bool = True, atol: float = 0.0) -> None:
    ma, mb = _metrics(a), _metrics(b)
    for k in QUALITY:
        assert ma[k] == pytest.approx(mb[k], abs=atol), k
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        x, y = wa[k], wb[k]
        if not exact and k.endswith("att.qkv.bias"):
            # The key bias's true gradient is exactly zero; its rounding noise is normalised
            # by AdamW into lr-sized steps, so it only agrees between bit-identical runs.
            d = x.numel() // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        if exact:
            assert torch.equal(x, y), k
        else:
            assert torch.allclose(x, y, atol=atol, rtol=0), (k, (x - y).abs().max())
    ha, hb = (json.loads((r / "history.json").read_text()) for r in (a, b))
    assert len(ha["steps"]) == len(hb["steps"]) and len(ha["epochs"]) == len(hb["epochs"])
    for sa, sb in zip(ha["steps"], hb["steps"]):
        assert sa["step"] == sb["step"] and sa["examples_seen"] == sb["examples_seen"]
        assert sa["val_loss"] == pytest.approx(sb["val_loss"], abs=atol)


# ----------------------------------------------------------------------------- units


def test_lr_schedule_shapes() -> None:
    total, warm = 100, 10
    assert [lr_factor(s, total, warm, "constant") for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    lin = [lr_factor(s, total, warm, "linear") for s in range(total)]
    assert cos[9] == cos[10] == lin[10] == 1.0
    assert cos[55] == pytest.approx(0.5) and lin[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(cos[10:], cos[11:])) and 0 < cos[-1] < 1e-3
    assert lin[-1] == pytest.approx(1 / 90)
    assert lr_factor(0, 10, 0, "cosine") == 1.0  # no warmup: the first step uses the full lr
    assert warmup_steps(200, ratio=0.05) == 10 and warmup_steps(5, steps=10) == 5
    with pytest.raises(GptclfError):
        lr_factor(0, 10, 0, "step")


@pytest.mark.parametrize("weighted", [False, True])
def test_accumulated_and_sharded_loss_is_the_big_batch_loss(weighted: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 3, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 2, 0, 0, 1, 0, 0, 0, 0, 2, 0, 1, 0])
    w = class_weights(y, 3) if weighted else None
    big = torch.nn.functional.cross_entropy(logits, y, weight=w)
    big.backward()
    g_big = logits.grad.clone()
    logits.grad = None
    total = float(w[y].sum()) if weighted else 16.0
    # 2 processes x 2 micro-batches of 4: DDP averages the two processes' gradients.
    per_rank = [torch.zeros_like(logits) for _ in range(2)]
    for rank in range(2):
        for micro in range(2):
            sl = slice(8 * micro + 4 * rank, 8 * micro + 4 * rank + 4)
            part = logits.detach()[sl].clone().requires_grad_(True)
            step_loss(part, y[sl], w, total, world_size=2).backward()
            per_rank[rank][sl] += part.grad
    assert torch.allclose((per_rank[0] + per_rank[1]) / 2, g_big, atol=1e-7)


def test_class_weights_are_inverse_frequency() -> None:
    w = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(GptclfError, match="no training example"):
        class_weights(torch.tensor([0, 0]), 2)


def test_early_stopping_tracks_the_best_epoch() -> None:
    m = torch.nn.Linear(2, 1)
    es = EarlyStopping("val_accuracy", patience=2)
    for epoch, (acc, w) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.7, 4.0)], 1):
        with torch.no_grad():
            m.weight.fill_(w)
        stop = es.update(epoch, acc, m)
    assert stop and es.best_epoch == 2 and es.stopped_epoch == 4  # 0.7 again is no gain
    es.restore_best(m)
    assert m.weight.tolist() == [[2.0, 2.0]]
    assert EarlyStopping("val_loss").update(1, 0.3, m) is False  # keep-best only: never stops


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.8, 0.9))
    for _ in range(3):
        p.grad = torch.randn(3, 2)
        opt.step()
    tensors, structure = flatten_optimizer_state(opt.state_dict())
    save_file(tensors, str(tmp_path / "o.safetensors"))
    (tmp_path / "o.json").write_text(json.dumps(structure))
    back = unflatten_optimizer_state(json.loads((tmp_path / "o.json").read_text()),
                                     load_file(str(tmp_path / "o.safetensors")))
    p2 = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([p2], lr=1e-3)
    opt2.load_state_dict(back)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)
    g = torch.randn(3, 2)
    p.grad, p2.grad = g, g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, p2)


def test_new_options_are_validated() -> None:
    for bad, msg in [(dict(grad_accum=0), "--grad-accum"), (dict(lr_schedule="step"), "--lr-schedule"),
                     (dict(warmup_steps=5, warmup_ratio=0.1), "not both"),
                     (dict(clip_grad_norm=0.0), "--clip-grad-norm"),
                     (dict(patience=2), "needs --early-stopping-metric"),
                     (dict(early_stopping_metric="f1"), "--early-stopping-metric")]:
        with pytest.raises(GptclfError, match=msg):
            TrainConfig(**bad).resolved()
    assert stopper_for(TrainConfig(keep_best=False)) is None  # --no-keep-best: the book's last epoch
    assert stopper_for(TrainConfig(reference=True).resolved()) is None
    assert stopper_for(TrainConfig(early_stopping_metric="val_accuracy")).patience == 3
    assert stopper_for(TrainConfig(keep_best=True)).patience is None


# ----------------------------------------------------------------------- the loop


def test_default_path_is_unchanged(tmp_path: Path, small_csv: Path, tiny_gpt2_config: Path) -> None:
    """Regression numbers of the book's loop (random-init tiny GPT-2, 2 epochs), measured on
    the code before the training controls existed; checkpointing must not change them. The
    book saves the last epoch's raw scores: best-epoch selection and calibration off; it
    splits by a plain shuffle and reads at most the longest training text (``--padding
    longest`` fixes that length; padding itself changes no result, as other tests show)."""
    book = dict(init="random", keep_best=False, calibrate=False, split="random", padding="longest")
    a = _train(tiny_gpt2_config, small_csv, tmp_path / "a", **book)
    b = _train(tiny_gpt2_config, small_csv, tmp_path / "b", checkpoint_every=0, **book)
    _same_run(a, b)
    m = _metrics(a)
    expected = {"train_accuracy": 0.8642857142857143, "val_accuracy": 0.75, "test_accuracy": 0.85,
                "train_loss": 0.33373984694480896, "val_loss": 0.45081228017807007,
                "test_loss": 0.3813219666481018}
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=2e-5), k
    assert not partial_dir(a).exists()  # the finished run replaced its checkpoints


@pytest.mark.parametrize("balance", ["none", "weight"])
def test_grad_accum_equals_one_big_batch(tmp_path: Path, small_csv: Path, tiny_gpt2: Path, balance: str) -> None:
    kw = dict(group_by_length=0, epochs=1, balance=balance, checkpoint_every=0)
    a = _train(tiny_gpt2, small_csv, tmp_path / "accum", batch_size=4, grad_accum=2, **kw)
    b = _train(tiny_gpt2, small_csv, tmp_path / "big", batch_size=8, **kw)
    ma, mb = _metrics(a), _metrics(b)
    assert ma["test_loss"] == pytest.approx(mb["test_loss"], abs=1e-5)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert torch.allclose(wa["out_head.weight"], wb["out_head.weight"], atol=1e-5)
    if balance == "weight":
        assert ma["n_train"] == 140  # all data kept
        w = ma["class_weights"]
        assert w["spam"] > 1 > w["ham"]
        c = _train(tiny_gpt2, small_csv, tmp_path / "unweighted", batch_size=8, **{**kw, "balance": "none"})
        assert _metrics(c)["test_loss"] != mb["test_loss"]  # the weights do change training


def test_schedule_clipping_and_early_stopping_keep_the_best(tmp_path: Path, small_csv: Path, tiny_gpt2: Path) -> None:
    run = _train(tiny_gpt2, small_csv, tmp_path / "es", epochs=4, lr=5e-3, lr_schedule="cosine",
                 warmup_ratio=0.1, clip_grad_norm=0.5, early_stopping_metric="val_loss", patience=1,
                 checkpoint_every=0, calibrate=False)  # val_loss below is the raw scores' loss
    m = _metrics(run)
    h = json.loads((run / "history.json").read_text())
    losses = [e["full_val_loss"] for e in h["epochs"]]
    best = min(range(len(losses)), key=lambda i: losses[i]) + 1
    assert m["best_epoch"] == best
    # lr 5e-3 overfits this tiny set fast: validation loss turns up before epoch 4.
    assert m["early_stopping"]["stopped_epoch"] == len(losses) == best + 1 < 4
    # The saved weights are the best epoch's: their validation loss is that epoch's.
    assert m["val_loss"] == pytest.approx(losses[best - 1], abs=1e-5)


# -------------------------------------------------------------- checkpoint and resume


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, small_csv: Path, tiny_gpt2: Path) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    return _train(tiny_gpt2, small_csv, out, epochs=3, checkpoint_every=2)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    state = partial_dir(out) / "checkpoint.json"
    t0 = time.monotonic()
    while not state.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.01)


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, small_csv: Path, tiny_gpt2: Path,
                                               reference_run: Path) -> None:
    out = tmp_path / "run"
    proc = _gptclf("train", *_cli_args(tiny_gpt2, small_csv, out, epochs=3, checkpoint_every=2))
    _wait_for_checkpoint(proc, out)
    time.sleep(random.uniform(0, 0.1))  # die at a random-ish later step
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "the run finished before it was killed: the test proves nothing"
    state = json.loads((partial_dir(out) / "checkpoint.json").read_text())
    assert 0 <= state["global_step"] < 3 * 17 - 1
    proc = _gptclf("train", "--resume", str(out), "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resumed at epoch" in err
    _same_run(out, reference_run)
    assert _metrics(out)["resumed_at_step"] == state["global_step"] + 1
    assert not partial_dir(out).exists() and (out.parent / "latest").resolve() == out.resolve()


def test_ctrl_c_saves_an_interrupted_run_that_resumes(tmp_path: Path, small_csv: Path, tiny_gpt2: Path,
                                                       reference_run: Path) -> None:
    out = tmp_path / "run"
    args = _cli_args(tiny_gpt2, small_csv, out, epochs=3, checkpoint_every=2)
    proc = _gptclf("train", *args)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert _metrics(out)["interrupted"] is True  # the book-compatible partial model
    assert f"--resume {out}" in err
    # Re-running the same command with --resume is allowed; a different option is not.
    bad = _gptclf("train", *args[:-1], "--lr", "0.1", "--resume", str(out))
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "--lr 0.1 (the run has 0.001)" in err and "Traceback" not in err
    proc = _gptclf("train", *args, "--resume", str(out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _metrics(out)["interrupted"] is False
    _same_run(out, reference_run)
    assert not list(out.parent.glob(".*"))  # no temporary or old directories left


def test_resume_errors_are_clear(tmp_path: Path, small_csv: Path, tiny_gpt2: Path, reference_run: Path) -> None:
    with pytest.raises(GptclfError, match="finished run"):
        _resume(reference_run)
    with pytest.raises(GptclfError, match="no checkpoint to resume"):
        _resume(tmp_path / "nothing")
    out = tmp_path / "r"
    write_run_info(partial_dir(out), {"out": str(out), "world_size": 1, "data_fingerprint": "x",
                                      "train": _opts(tiny_gpt2, small_csv, out)})
    with pytest.raises(GptclfError, match="data differs"):
        _resume(out)
    with pytest.raises(GptclfError, match="holds the checkpoints of an unfinished run"):
        _train(tiny_gpt2, small_csv, out)


def _resume(run: Path) -> Path:
    from gptclf.training.recipe import resume_training

    return resume_training(run, log=lambda s: None, progress=False)


# ------------------------------------------------------------------------ processes


def test_two_processes_match_one_with_the_global_batch(tmp_path: Path, small_csv: Path, tiny_gpt2: Path) -> None:
    single = _train(tiny_gpt2, small_csv, tmp_path / "single", batch_size=8)
    out = tmp_path / "ddp"
    args = _cli_args(tiny_gpt2, small_csv, out, batch_size=4)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "gptclf", "train", *args], capture_output=True, text=True, timeout=300,
                       env=env_with(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"run"') == 1  # rank 0 alone reports and saves
    m = _metrics(out)
    assert m["world_size"] == 2
    _same_run(out, single, exact=False, atol=2e-6)


def test_resume_restores_every_control(tmp_path: Path, small_csv: Path, tiny_gpt2: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash right after the 8th checkpoint (epoch 2, mid-epoch), with accumulation, a
    warmup + cosine schedule, clipping, class weights and early stopping all on."""
    from gptclf.training import state as checkpoint
    from gptclf.training.recipe import resume_training

    opts = dict(epochs=4, batch_size=4, grad_accum=2, lr=5e-3, lr_schedule="cosine", warmup_steps=5,
                clip_grad_norm=0.5, balance="weight", early_stopping_metric="val_loss", patience=1,
                checkpoint_every=3)
    reference = _train(tiny_gpt2, small_csv, tmp_path / "ref", **opts)
    real_save, saves = checkpoint.Checkpointer.save, []

    def crash_after_eighth(self, tensors, state):  # noqa: ANN001
        path = real_save(self, tensors, state)
        saves.append((state["epoch"], state["batch"]))
        if len(saves) == 8:
            raise RuntimeError("simulated crash")
        return path

    monkeypatch.setattr(checkpoint.Checkpointer, "save", crash_after_eighth)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tiny_gpt2, small_csv, out, **opts)
    assert saves[-1][0] == 1 and saves[-1][1] > 0  # in the middle of the second epoch
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    resume_training(out, log=lambda s: None, progress=False)
    _same_run(out, reference)
    assert _metrics(out)["best_epoch"] == _metrics(reference)["best_epoch"]
