"""Issue 15, finding 8: a short run's loss plot shows its points (markers), placed by the
examples seen, and the full validation loss at each epoch end when the history has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.rundir import plots


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    plt = plots._pyplot()
    kept: list = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))  # keep the figures to look at
    return kept


def test_a_single_evaluation_is_a_visible_point(tmp_path: Path, figures: list) -> None:
    hist = {"steps": [{"step": 0, "epoch": 1, "examples_seen": 8, "train_loss": 1.0, "val_loss": 1.2}],
            "epochs": [{"epoch": 1, "examples_seen": 32, "train_accuracy": 0.5, "val_accuracy": 0.4,
                        "full_val_loss": 0.9},
                       {"epoch": 2, "examples_seen": 64, "train_accuracy": 0.7, "val_accuracy": 0.6,
                        "full_val_loss": 0.7}]}
    plots.plot_history(hist, tmp_path, 2)
    assert (tmp_path / "loss-plot.png").exists() and (tmp_path / "accuracy-plot.png").exists()
    loss_fig = figures[0]
    lines = {ln.get_label(): ln for ln in loss_fig.axes[0].get_lines()}
    assert lines["Training loss"].get_marker() == "o"
    assert list(lines["Training loss"].get_xdata()) == [0.25]  # 8 of 32 examples per epoch
    full = lines["Validation loss (full set, epoch end)"]
    assert list(full.get_xdata()) == [1, 2] and list(full.get_ydata()) == [0.9, 0.7]


def test_old_histories_still_plot(tmp_path: Path, figures: list) -> None:
    steps = [{"train_loss": 1.0 - i / 10, "val_loss": 1.1 - i / 10, "examples_seen": 8 * i} for i in range(3)]
    plots.plot_history({"steps": steps, "epochs": []}, tmp_path, 1)
    xs = list(figures[0].axes[0].get_lines()[0].get_xdata())
    assert xs == [0.0, 0.5, 1.0]
