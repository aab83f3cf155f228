"""--static-shapes: fixed width buckets and static buffers (CUDA graphs on a GPU) give the
eager path's losses, weights and predictions. On the CPU the same buffer code runs
without capture, so these tests check the bucketing, the padded rows and the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import sms_head_csv
from safetensors.torch import load_file

from gptclf.config import TrainConfig
from gptclf.graphs import StaticRunner, bucket_width, pad_rows, row_bucket
from gptclf.training.recipe import run_training

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 2e-6
# Weights are compared per tensor in norm, not element by element. The two paths see the
# same rows in differently shaped batches, so each gradient differs from the other by
# float32 rounding (u = 6e-8 times the reduction length, about 1e-6 relative). AdamW
# divides every element's step by that element's own running RMS: where a gradient is at
# the rounding level (an embedding row of a token seen once), the step is rounding noise
# scaled up towards lr. A handful of such elements differ by a few 1e-6 and how many
# depends on the CPU's kernels (2.4e-6 on one machine, 5.3e-6 on another), while the
# tensor as a whole agrees to about 6e-7 of its norm. RTOL leaves 16x margin over that and
# still fails loudly for a real bug: a padded row leaking into the loss or a gradient
# changes a tensor by about 1/batch of its update, 1e-2 of its norm and more.
RTOL = 1e-5
# A chunked run with --aggregation max routes each feature's gradient to one window; where two
# windows tie to within rounding the two paths can pick different ones, and AdamW carries that
# step's difference for a few steps. Measured (one thread): the history's estimated val loss up
# to 1.3e-5 apart at three of 18 steps (7e-7 with attention), the weights still 5e-6 of their
# norm (within RTOL) and the final metrics within ATOL. A binary cross-entropy moves by at most
# the change of the logit gap, and a 5e-6 relative change of the weights changes gaps of up to 5.4
# (measured on this run) by 2.7e-5: hence 3e-5. A padded window leaking into a pool or the loss
# moves it by 1e-3 and more.
CHUNK_LOSS_ATOL = 3e-5


@pytest.fixture(scope="module")
def mixed_csv(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 SMS messages, short and long (several width buckets), both classes."""
    return sms_head_csv(sms_file, tmp_path_factory.mktemp("data") / "mixed.csv", 150)


def test_width_buckets() -> None:
    widths = {bucket_width(n) for n in range(1, 129)}
    assert widths == set(range(16, 129, 16))  # SMS-length texts: 8 shapes
    assert [bucket_width(n) for n in (129, 192, 193, 256, 257, 385, 600)] == [192, 192, 256, 256, 384, 512, 768]
    for n in range(1, 2000, 7):
        w = bucket_width(n)
        assert n <= w <= max(16, 1.5 * n + 16)
        assert bucket_width(n, cap=120) == max(min(w, 120), n)
    assert [row_bucket(n) for n in (1, 2, 3, 8, 9, 64, 65)] == [1, 2, 4, 8, 16, 64, 128]


def test_padded_rows_are_cut_and_buffers_are_reused() -> None:
    x, lengths = pad_rows(torch.ones(3, 5), torch.tensor([5, 2, 1]), 4, 0.0)
    assert x.shape == (4, 5) and x[3].abs().sum() == 0 and lengths.tolist() == [5, 2, 1, 1]
    calls = []
    runner = StaticRunner(lambda a: calls.append(a.data_ptr()) or a * 2, torch.device("cpu"), capture=False)
    out1 = runner(torch.ones(2, 16))["outputs"]
    out2 = runner(torch.full((2, 16), 3.0))["outputs"]
    runner(torch.ones(2, 32))
    assert len(runner) == 2 and calls[0] == calls[1] != calls[2]  # one buffer per shape
    assert out1.eq(2).all() and out2.eq(6).all()


def _run(model: Path, data: Path, out: Path, static: str, **kw) -> Path:
    opts = dict(model=str(model), data=str(data), balance="none", epochs=2, eval_freq=3, lr=1e-3,
                out=str(out), progress=False, device="cpu", static_shapes=static, eval_batch_size=16)
    opts.update(kw)
    logs: list[str] = []
    run = run_training(TrainConfig(**opts), log=logs.append)
    assert any("static shapes:" in s for s in logs) == (static == "on"), logs
    return run


def _same(a: Path, b: Path, history_atol: float = ATOL) -> None:
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for k in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss"):
        assert ma[k] == pytest.approx(mb[k], abs=ATOL), k
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:
        x, y = wa[k], wb[k]
        if k.endswith("att.qkv.bias"):  # the key bias's true gradient is 0: AdamW scales its rounding noise
            d = x.numel() // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        assert (x - y).norm() <= RTOL * x.norm(), (k, ((x - y).norm() / x.norm()).item())
    ha, hb = (json.loads((r / "history.json").read_text()) for r in (a, b))
    assert len(ha["steps"]) == len(hb["steps"]) > 3
    for sa, sb in zip(ha["steps"], hb["steps"]):
        assert sa["train_loss"] == pytest.approx(sb["train_loss"], abs=history_atol)
        assert sa["val_loss"] == pytest.approx(sb["val_loss"], abs=history_atol)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"trainable": "all"}, {"balance": "weight", "trainable": "last_layer"}],
                         ids=["trunk-cache", "no-cache", "class-weights"])
def test_static_shapes_equal_the_eager_path(tmp_path: Path, mixed_csv: Path, tiny_gpt2: Path, kw: dict) -> None:
    """Cached tail, whole model, and a class-weighted loss: same losses, weights and metrics."""
    eager = _run(tiny_gpt2, mixed_csv, tmp_path / "eager", "off", **kw)
    static = _run(tiny_gpt2, mixed_csv, tmp_path / "static", "on", **kw)
    _same(eager, static)


def test_auto_is_the_eager_path_on_cpu(tmp_path: Path, mixed_csv: Path, tiny_gpt2: Path, monkeypatch) -> None:
    """auto on a CPU (and off anywhere) builds no static step and no static feeders."""
    from gptclf.training import loop

    seen = []
    original = loop.Trainer.fit

    def spy(self, *a, **k):  # noqa: ANN001
        seen.append((self.static_step, getattr(self.train_feed, "static", None), self.train_feed.width_of))
        return original(self, *a, **k)

    monkeypatch.setattr(loop.Trainer, "fit", spy)
    _run(tiny_gpt2, mixed_csv, tmp_path / "auto", "auto", epochs=1)
    assert seen == [(None, None, None)]


def test_incompatible_options_fall_back_with_a_reason(tmp_path: Path, mixed_csv: Path, tiny_gpt2: Path) -> None:
    logs: list[str] = []
    run_training(TrainConfig(model=str(tiny_gpt2), data=str(mixed_csv), balance="none", epochs=1, out=str(tmp_path / "r"),
                             progress=False, device="cpu", static_shapes="on", grad_accum=2), log=logs.append)
    assert any("static shapes off: it needs one process and one micro-batch" in s for s in logs), logs


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"trainable": "all", "aggregation": "max"}, {"aggregation": "mean"}],
                         ids=["trunk-cache-attention", "no-cache-max", "trunk-cache-mean"])
def test_static_shapes_equal_the_eager_path_for_a_chunked_run(tmp_path: Path, mixed_csv: Path, tiny_gpt2: Path,
                                                              kw: dict) -> None:
    """--long-text chunk at --max-length 24 (a third of these SMS messages are several windows): the
    static step runs a batch's windows in one pass, rows padded to a power of two and owned by a
    dummy text; same losses, weights (the window pool's too) and metrics as the eager path, to
    the tolerances above (the same rounding argument: only the shapes of the products differ)."""
    opts = dict(max_length=24, long_text="chunk", stride=4, batch_size=4, **kw)
    eager = _run(tiny_gpt2, mixed_csv, tmp_path / "eager", "off", **opts)
    static = _run(tiny_gpt2, mixed_csv, tmp_path / "static", "on", **opts)
    _same(eager, static, CHUNK_LOSS_ATOL if kw.get("aggregation") == "max" else ATOL)
    m = json.loads((static / "metrics.json").read_text())
    train = m["text_lengths"]["train"]  # the windows are what is being tested
    assert train["chunked"] >= m["n_train"] // 3 and train["max_windows"] >= 3
    if kw.get("aggregation", "attention") == "attention":
        assert "window_pool.query" in load_file(str(static / "model.safetensors"))
