"""Best-epoch selection by default: the saved weights are the best epoch's, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_gpt2_config_only
from gptclf.cli import build_parser
from gptclf.config import TrainConfig
from gptclf.training.controls import EarlyStopping
from gptclf.training.recipe import run_training


@pytest.fixture(scope="module")
def overfit_csv(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 training-sized rows of real SMS: small enough that a high lr overfits in a few epochs."""
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    ham = [t for lab, t in rows if lab == "ham"][:100]
    spam = [t for lab, t in rows if lab == "spam"][:100]
    path = tmp_path_factory.mktemp("overfit") / "sms.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for pair in zip(ham, spam) for lab, t in zip(("ham", "spam"), pair)))
    return path


def _train(model: Path, data: Path, out: Path, **kw) -> Path:
    opts = dict(model=str(model), init="random", data=str(data), epochs=5, lr=3e-3, eval_freq=100,
                trainable="all", checkpoint_every=0, progress=False, out=str(out))
    return run_training(TrainConfig(**{**opts, **kw}), log=lambda s: None)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_saved_weights_are_the_best_epochs_bit_for_bit(tmp_path: Path, overfit_csv: Path) -> None:
    tiny = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    best_run = _train(tiny, overfit_csv, tmp_path / "best")
    m = json.loads((best_run / "metrics.json").read_text())
    curve = m["val_curve"]
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4, 5]
    # The best: highest full-validation accuracy, ties broken by the lower loss.
    best = max(curve, key=lambda c: (c["val_accuracy"], -c["val_loss"]))["epoch"]
    assert m["best_epoch"] == best and m["early_stopping"]["metric"] == "val_accuracy"
    history = json.loads((best_run / "history.json").read_text())
    assert [e["full_val_accuracy"] for e in history["epochs"]] == [c["val_accuracy"] for c in curve]
    assert m["val_accuracy"] == pytest.approx(curve[best - 1]["val_accuracy"])
    # The same run stopped after the best epoch, with the book's last-epoch saving.
    short = _train(tiny, overfit_csv, tmp_path / "short", epochs=best, keep_best=False)
    last = _train(tiny, overfit_csv, tmp_path / "last", keep_best=False)
    wb, ws, wl = _weights(best_run), _weights(short), _weights(last)
    assert wb.keys() == ws.keys()
    for k in wb:
        assert torch.equal(wb[k], ws[k]), k
    assert best < 5  # lr 3e-3 overfits 140 texts: the last epoch is not the best ...
    assert any(not torch.equal(wb[k], wl[k]) for k in wb)  # ... and its weights were not saved
    assert "best_epoch" not in json.loads((last / "metrics.json").read_text())


def test_accuracy_ties_go_to_the_lower_loss() -> None:
    model = torch.nn.Linear(2, 2)
    es = EarlyStopping("val_accuracy", None)
    assert es.update(1, 0.90, model, tie=0.40) is False
    assert not es.update(2, 0.90, model, tie=0.45) and es.best_epoch == 1  # same accuracy, worse loss
    es.update(3, 0.90, model, tie=0.30)
    assert es.best_epoch == 3 and es.best_tie == 0.30
    es.update(4, 0.95, model, tie=0.90)  # higher accuracy wins whatever the loss
    assert es.best_epoch == 4
    es.update(5, 0.93, model, tie=0.10)
    assert es.best_epoch == 4 and es.bad_epochs == 1


def test_flags_and_reference() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--no-keep-best", "--no-calibrate"])
    assert args.keep_best is False and args.calibrate is False
    assert TrainConfig().keep_best and TrainConfig().calibrate  # the defaults
    ref = TrainConfig(reference=True).resolved()
    assert not ref.keep_best and not ref.calibrate  # --reference: the book's exact path
