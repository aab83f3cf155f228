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


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_saved_weights_are_the_best_epochs_bit_for_bit(tmp_path: Path, overfit_csv: Path) -> None:
    """--early-stopping-metric val_accuracy: the top epoch (ties to the lower loss) is kept."""
    tiny = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    best_run = _train(tiny, overfit_csv, tmp_path / "best", early_stopping_metric="val_accuracy", patience=10)
    m = json.loads((best_run / "metrics.json").read_text())
    curve = m["val_curve"]
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4, 5]
    best = max(curve, key=lambda c: (c["val_accuracy"], -c["val_loss"]))["epoch"]
    assert m["best_epoch"] == best and m["early_stopping"]["metric"] == "val_accuracy"
    history = json.loads((best_run / "history.json").read_text())
    assert [e["full_val_accuracy"] for e in history["epochs"]] == [c["val_accuracy"] for c in curve]
    assert m["val_accuracy"] == pytest.approx(curve[best - 1]["val_accuracy"])
    # The same run stopped after the best epoch, with the book's last-epoch saving.
    short = _train(tiny, overfit_csv, tmp_path / "short", epochs=best, keep_best=False)
    last = _train(tiny, overfit_csv, tmp_path / "last", keep_best=False)
    assert _same_weights(best_run, short)
    assert best < 5  # lr 3e-3 overfits 140 texts: the last epoch is not the best ...
    assert not _same_weights(best_run, last)  # ... and its weights were not saved
    assert "best_epoch" not in json.loads((last / "metrics.json").read_text())


def test_the_default_keeps_the_latest_epoch_within_noise_bit_for_bit(tmp_path: Path, overfit_csv: Path) -> None:
    tiny = write_gpt2_config_only(tmp_path / "tiny", n_layer=2, n_embd=32)
    run = _train(tiny, overfit_csv, tmp_path / "default")
    m = json.loads((run / "metrics.json").read_text())
    es, curve = m["early_stopping"], m["val_curve"]
    top = curve[es["top_epoch"] - 1]["val_accuracy"]
    assert es["noise_z"] == 1.0 and "top_right" not in es  # resume state, not a metric
    assert top == max(c["val_accuracy"] for c in curve)
    assert es["top_epoch"] == min(c["epoch"] for c in curve if c["val_accuracy"] == top)  # the first to reach it
    kept = m["best_epoch"]
    assert kept >= es["top_epoch"] and m["val_accuracy"] == pytest.approx(curve[kept - 1]["val_accuracy"])
    short = _train(tiny, overfit_csv, tmp_path / "short", epochs=kept, keep_best=False)
    assert _same_weights(run, short)


def _right(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


def test_within_noise_rule_prefers_the_later_epoch_unless_clearly_worse() -> None:
    model = torch.nn.Linear(2, 2)
    es = EarlyStopping("val_accuracy", None, noise_z=1.0)
    n = 100
    top = torch.ones(n, dtype=torch.bool)
    top[:10] = False  # epoch 1: 90 % right
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert es.update(1, 0.90, model, tie=0.3, right=top) is False and es.best_epoch == 1 == es.top_epoch
    dip = top.clone()
    dip[10] = False  # epoch 2: one text fewer right: 1 - 0 <= sqrt(1), within noise
    with torch.no_grad():
        model.weight.fill_(2.0)
    es.update(2, 0.89, model, tie=0.5, right=dip)
    assert es.best_epoch == 2 and es.top_epoch == 1 and torch.equal(es.best_state["weight"], torch.full((2, 2), 2.0))
    swap = top.clone()
    swap[10:14] = False
    swap[:2] = True  # epoch 3: 4 lost, 2 gained: 2 <= sqrt(6), within noise
    es.update(3, 0.88, model, right=swap)
    assert es.best_epoch == 3
    worse = top.clone()
    worse[10:20] = False  # epoch 4: 10 lost, none gained: 10 > sqrt(10), clearly worse
    with torch.no_grad():
        model.weight.fill_(4.0)
    es.update(4, 0.80, model, right=worse)
    assert es.best_epoch == 3 and torch.equal(es.best_state["weight"], torch.full((2, 2), 2.0))
    es.update(5, 0.95, model, right=torch.ones(n, dtype=torch.bool))  # a new top is always kept
    assert es.best_epoch == es.top_epoch == 5 and es.stopped_epoch is None


def test_within_noise_state_round_trips_and_multi_label_falls_back() -> None:
    model = torch.nn.Linear(2, 2)
    es = EarlyStopping("val_accuracy", None, noise_z=1.0)
    es.update(1, 0.75, model, right=_right(1, 1, 1, 0))
    again = EarlyStopping("val_accuracy", None, noise_z=1.0)
    again.load_state(json.loads(json.dumps(es.state())), es.best_state)
    again.update(2, 0.25, model, right=_right(1, 0, 0, 0))  # 2 lost, 0 gained: 2 > sqrt(2)
    assert again.best_epoch == 1 and again.top_right == "1110"
    ml = EarlyStopping("val_accuracy", None, noise_z=1.0)  # multi-label: no per-text "right"
    ml.update(1, 0.8, model, tie=0.2)
    ml.update(2, 0.79, model, tie=0.1)
    assert ml.best_epoch == 1 and ml.top_epoch is None  # the plain rule: the higher micro-F1


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
