"""Experiment tracking, as Hugging Face's Trainer does it: ``--report-to tensorboard|mlflow``.

One home for it. The run opens a tracker (:func:`open_tracker`) and hands it the resolved
options; the training loop hands it every record it keeps in ``history.json`` (a loss
estimate every ``--eval-freq`` steps, the accuracies at each epoch end) with the learning
rate and examples/s (:meth:`Tracker.record`); the run hands it the final metrics and the run
directory (:meth:`Tracker.finish`). Metric names are history.json's keys (``train_loss``,
``val_accuracy``, ...), the final metrics metrics.json's with a ``final/`` prefix, and the
step is the optimizer step.

Nothing here imports ``mlflow`` or ``tensorboard`` unless ``--report-to`` names it: the
packages are optional extras (``pip install 'gptclf[mlflow]'`` / ``'gptclf[tensorboard]'``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from ..config import REPORT_TO
from ..errors import GptclfError
from ..progress import Log

EXPERIMENT = "gptclf"  # MLflow's experiment, unless MLFLOW_EXPERIMENT_NAME names another
# The loop's records: what each holds besides its step (history.json's keys, plus lr and speed).
RECORD_KEYS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "full_val_loss",
               "full_val_accuracy", "lr", "examples_per_second")


def scalars(values: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """The numbers among ``values`` (``keys`` only, when given); flags and nested reports left out."""
    return {k: float(v) for k, v in values.items() if (keys is None or k in keys)
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """``--report-to none``: every call does nothing. A backend overrides :meth:`log_metrics`,
    :meth:`log_options`, :meth:`log_run_dir` and :meth:`close`; it is a context manager
    that closes with the run's outcome."""

    name = "none"
    last_step = 0

    def record(self, kind: str, entry: dict[str, Any]) -> None:
        """One record of the loop (``kind`` ``"step"`` or ``"epoch"``), at its ``step``."""
        self.last_step = int(entry.get("step", self.last_step))
        self.log_metrics(scalars(entry, RECORD_KEYS), self.last_step)

    def finish(self, metrics: dict[str, Any], run_dir: Path) -> None:
        """The run's final metrics (metrics.json's numbers) and its saved directory."""
        self.log_metrics({f"final/{k}": v for k, v in scalars(metrics).items()}, self.last_step)
        self.log_run_dir(run_dir)

    def log_options(self, options: dict[str, Any]) -> None: ...

    def log_metrics(self, values: dict[str, float], step: int) -> None: ...

    def log_run_dir(self, run_dir: Path) -> None: ...

    def close(self, status: str) -> None: ...

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir`` (``tensorboard --logdir`` on it or on its parent)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GptclfError("--report-to tensorboard needs the tensorboard package",
                              hint="pip install 'gptclf[tensorboard]' (or tensorboard)") from None
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_options(self, options: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in options.items())
        self.writer.add_text("options", "| option | value |\n|---|---|\n" + rows)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_run_dir(self, run_dir: Path) -> None:
        self.writer.add_text("run_directory", str(run_dir.resolve()))

    def close(self, status: str) -> None:
        self.writer.close()


def mlflow_uri(given: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlruns``; a path becomes a file URI.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless
    ``MLFLOW_ALLOW_FILE_STORE`` says yes: a local directory is what was asked for here, so
    that is allowed (unless the environment already says otherwise)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if len(urlparse(uri).scheme) <= 1:  # no scheme, or a Windows drive letter: a directory
        uri = Path(uri).expanduser().resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


class MlflowTracker(Tracker):
    """One MLflow run (named as the run directory) in experiment ``gptclf``, through MLflow's
    client (no global active run: ``gptclf.train`` may be called many times in one process)."""

    name = "mlflow"

    def __init__(self, uri: str, run_name: str) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise GptclfError("--report-to mlflow needs the mlflow package",
                              hint="pip install 'gptclf[mlflow]' (or mlflow / mlflow-skinny)") from None
        self._metric, self._param = Metric, Param
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            experiment = self.client.get_experiment_by_name(name)
            exp_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        except Exception as e:  # MlflowException, an unreachable server, a bad URI
            raise GptclfError(f"MLflow at {uri}: {str(e).splitlines()[0][:300]}",
                              hint="check --tracking-uri / MLFLOW_TRACKING_URI") from None

    def log_options(self, options: dict[str, Any]) -> None:
        params = [self._param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in options.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i: i + 100])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i: i + 1000])

    def log_run_dir(self, run_dir: Path) -> None:
        self.client.log_artifacts(self.run_id, str(run_dir), artifact_path="run")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def open_tracker(report_to: str, tracking_uri: str | None, out: Path, log: Log, enabled: bool = True) -> Tracker:
    """The tracker ``--report-to`` names for the run written to ``out`` (a do-nothing one for
    ``none``, and on every process but rank 0). TensorBoard's events go to ``--tracking-uri``,
    else ``tensorboard/<run name>`` beside the run directory."""
    assert report_to in REPORT_TO, report_to  # TrainConfig checked it
    if report_to == "none" or not enabled:
        return Tracker()
    if report_to == "tensorboard":
        log_dir = Path(tracking_uri).expanduser() if tracking_uri else out.parent / "tensorboard" / out.name
        log(f"report to: TensorBoard, {log_dir} (tensorboard --logdir {log_dir.parent})")
        return TensorBoardTracker(log_dir)
    tracker = MlflowTracker(mlflow_uri(tracking_uri), out.name)
    log(f"report to: MLflow, {tracker.uri}, run {tracker.run_id} (mlflow ui --backend-store-uri {tracker.uri})")
    return tracker
