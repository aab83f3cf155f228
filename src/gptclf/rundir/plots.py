"""The run's pictures: the book's loss and accuracy curves (``plot_values``) and the
test split's confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..files import atomic_path

CONFUSION_PNG = "confusion-matrix.png"
RELIABILITY_PNG = "reliability-diagram.png"


def _pyplot():  # -> matplotlib.pyplot, drawing to files only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_values(epochs_seen: list[float], examples_seen: list[float], train_values: list[float],
                val_values: list[float], label: str, path: Path,
                epoch_values: tuple[list[float], list[float]] | None = None) -> None:
    """The book's ``plot_values``: epochs on the bottom axis, examples seen on the top.

    Every value is drawn with a marker, so a run with one evaluation still shows its point;
    ``epoch_values`` (epochs, values) adds the full validation set's value at each epoch end.
    """
    plt = _pyplot()
    fig, ax1 = plt.subplots(figsize=(5, 3))
    marker = "o" if len(epochs_seen) <= 60 else None  # dense curves read better without dots
    ax1.plot(epochs_seen, train_values, marker=marker, markersize=3, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", marker=marker, markersize=3, label=f"Validation {label}")
    if epoch_values is not None and epoch_values[0]:
        ax1.plot(epoch_values[0], epoch_values[1], linestyle=":", marker="s", markersize=4,
                 label=f"Validation {label} (full set, epoch end)")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label[:1].upper() + label[1:])
    ax1.legend(fontsize="small")
    ax2 = ax1.twiny()
    ax2.plot(examples_seen, train_values, alpha=0)  # invisible: only sets the top axis
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _epoch_positions(steps: list[dict[str, Any]], eps: list[dict[str, Any]], epochs: int) -> list[float]:
    """Where each evaluation falls in epochs: from the examples seen when the run has epoch
    ends to scale them, else spread evenly over the run (histories from older runs)."""
    if eps and eps[0].get("examples_seen") and all("examples_seen" in s for s in steps):
        per_epoch = eps[0]["examples_seen"] / eps[0]["epoch"]
        return [s["examples_seen"] / per_epoch for s in steps]
    n = len(steps)
    return [epochs * (i / (n - 1) if n > 1 else 1.0) for i in range(n)]


def plot_history(hist: dict[str, Any], directory: Path, epochs: int, score: str = "accuracy") -> None:
    """loss-plot.png and accuracy-plot.png (``score``: what the epochs' *_accuracy hold; a
    multi-label run's are micro-F1)."""
    steps, eps = hist.get("steps", []), hist.get("epochs", [])
    full = [(e["epoch"], e.get("full_val_loss", e.get("val_loss"))) for e in eps
            if e.get("full_val_loss", e.get("val_loss")) is not None]
    epoch_losses = ([x for x, _ in full], [v for _, v in full])
    if steps:
        plot_values(_epoch_positions(steps, eps, epochs), [s["examples_seen"] for s in steps],
                    [s["train_loss"] for s in steps], [s["val_loss"] for s in steps], "loss",
                    directory / "loss-plot.png", epoch_losses)
    if eps:
        plot_values([e["epoch"] for e in eps], [e["examples_seen"] for e in eps],
                    [e["train_accuracy"] for e in eps], [e["val_accuracy"] for e in eps],
                    score, directory / "accuracy-plot.png")


def plot_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path,
                          title: str = "Confusion matrix") -> None:
    """Counts in every cell; rows are the true class, columns the predicted one."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(cm)
    n = len(labels)
    size = max(3.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels=list(labels), rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    threshold = m.max() / 2 if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center",
                    color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)




def plot_reliability(before: Sequence[dict[str, float]], after: Sequence[dict[str, float]], path: Path,
                     ece: tuple[float, float], temperature: float) -> None:
    """The reliability diagram: per confidence bin, the accuracy against the mean confidence,
    before and after temperature scaling; a calibrated model lies on the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for bins, style, name, e in ((before, "o--", "raw scores", ece[0]), (after, "s-", f"T = {temperature:.2f}", ece[1])):
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=f"{name} (ECE {e:.3f})")
    ax.set_xlabel("Confidence (top class)")
    ax.set_ylabel("Accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability (test)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
