"""Bulk prediction on Ray Data: :func:`predict` turns a ``ray.data.Dataset`` of texts into one
with the columns ``gptclf predict --input`` adds (built by the same code,
:func:`gptclf.inference.batch_files.prediction_columns`), scored by a pool of actors that
each load the run's :class:`~gptclf.inference.classifier.Classifier` once.

Ray does the scheduling, the streaming (bounded memory per worker: a few ``rows_per_batch``
blocks in flight) and the retries: an actor that dies (a killed process, a lost node) is
restarted and its unfinished batches are run again, so every row comes out exactly once.
:func:`check_job`, :func:`read_tables` and :func:`predict_files` are ``gptclf predict --engine ray``;
:func:`check_job` finds a bad job before Ray starts.
"""

from __future__ import annotations

import glob
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.tables import cell_text, detect_format
from ..errors import GptclfError
from ..inference.batch_files import BatchResult, added_columns, prediction_columns
from .cluster import require_ray

ID_COLUMN = "id"
READ_FORMATS = ("csv", "tsv", "jsonl", "parquet")
WRITE_FORMATS = ("parquet", "csv", "jsonl")
RETRIES = 3  # restarts of a dead actor, and re-runs of the batches it held


class Scorer:
    """Ray Data's callable class: built once per actor (the model loads here), then called
    with one ``pyarrow.Table`` batch after another."""

    def __init__(self, run: str, text_column: str, output_format: str, batch_size: int, device: str,
                 backend: str, int8: bool, threads: int) -> None:
        from ..inference.classifier import Classifier

        self.clf = Classifier.load(run, device=device, quantize="int8" if int8 else None, backend=backend,
                                   threads=threads)
        self.text_column, self.output_format, self.batch_size = text_column, output_format, batch_size

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from ..errors import DataWarning

        texts = [cell_text(v, f"row {i} of a batch", self.text_column)
                 for i, v in enumerate(batch.column(self.text_column).to_pylist())]
        with warnings.catch_warnings():  # the truncated column says which; no warning per batch
            warnings.filterwarnings("ignore", message=".*were truncated", category=DataWarning)
            ids, flags = self.clf.encode_with_flags(texts)
            probs = self.clf.proba_from_ids(ids, self.batch_size)
        for name, values in prediction_columns(self.clf, probs, flags, self.output_format).items():
            kind = pa.list_(pa.string()) if values and isinstance(values[0], list) else None
            batch = batch.append_column(name, pa.array(values, type=kind))
        return batch


def predict(dataset: Any, run: str | Path, *, text_column: str = "text", id_column: str | None = ID_COLUMN,
            batch_size: int = 32, rows_per_batch: int = 1000, concurrency: int = 1, num_cpus: float = 1,
            num_gpus: float = 0, backend: str = "auto", int8: bool = False, threads: int = 0,
            output_format: str = "parquet") -> Any:
    """``dataset`` with every column kept and the prediction columns added (lazy: Ray runs it
    when the result is written or consumed).

    ``concurrency`` actors, each with ``num_cpus`` CPUs and ``num_gpus`` GPUs (a GPU: the model
    on ``cuda``), score ``rows_per_batch`` rows at a time in model batches of ``batch_size``;
    ``backend``/``int8``/``threads`` as in ``gptclf predict`` (``threads`` 0: ``num_cpus``).
    ``id_column``: kept when the dataset has it (your key to join back on); else added as Ray's
    ``monotonically_increasing_id`` (unique, not a line number; set Ray's ``preserve_order``
    to keep the input order too). ``output_format``: ``csv``/``tsv`` write label sets and
    ``truncated`` as ``gptclf predict`` does in those formats; otherwise lists and booleans."""
    require_ray()
    run = str(Path(run).expanduser().resolve())
    columns = dataset.columns()
    if text_column not in columns:
        raise GptclfError(f"the dataset has no text column {text_column!r}; its columns are {columns[:50]}",
                          hint="pass text_column=NAME")
    clash = [c for c in _output_columns(run) if c in columns]
    if clash:
        raise GptclfError(f"the dataset already has column(s) {clash} that the prediction adds",
                          hint="rename those columns in the input")
    if id_column and id_column not in columns:
        from ray.data.expressions import monotonically_increasing_id

        dataset = dataset.with_column(id_column, monotonically_increasing_id())
    kwargs = dict(run=run, text_column=text_column, output_format=output_format, batch_size=batch_size,
                  device="cuda" if num_gpus else "cpu", backend=backend, int8=int8,
                  threads=threads or max(1, int(num_cpus)))
    with warnings.catch_warnings():  # Ray 2.60 names no parameter for actor restarts yet, only **kwargs
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return dataset.map_batches(Scorer, fn_constructor_kwargs=kwargs, batch_size=rows_per_batch,
                                   batch_format="pyarrow", concurrency=concurrency, num_cpus=num_cpus,
                                   num_gpus=num_gpus, max_restarts=RETRIES, max_task_retries=RETRIES)


def _output_columns(run: str) -> list[str]:
    """The columns the prediction adds for this run (read from its config.json, no model loaded)."""
    from .. import tasks
    from ..rundir.load import read_run_config

    cfg = read_run_config(run)
    return added_columns(list(cfg.labels), tasks.get(cfg.task))


def input_files(path: str | Path) -> list[Path]:
    """The files ``PATH`` names: itself, the data files of a directory of shards (hidden and
    ``_``-prefixed ones skipped, as Ray and Spark write them), or a glob's matches; sorted."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
    else:
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise GptclfError(f"--input {path}: no such file, or no files in it",
                          hint="give a file, a directory of shards or a quoted glob ('shards/*.csv')")
    return files


@dataclass
class Job:
    """A ``gptclf predict --engine ray`` job, checked (:func:`check_job`)."""

    files: list[Path]
    kind: str  # one of READ_FORMATS
    columns: list[str]  # of the first file
    run: str  # absolute
    out: Path


def check_job(input_path: str | Path, run: str | Path, output_dir: str | Path, *, input_format: str | None = None,
              output_format: str = "parquet", text_column: str = "text") -> Job:
    """Everything about a job that can be wrong before it runs, checked here without Ray (a
    cluster takes seconds to join, and a job minutes to fail on a worker): the output format,
    the input files and their format and text column, the run (its config and weights file,
    no model loaded) and the output directory. The first problem is a one-line GptclfError."""
    if output_format not in WRITE_FORMATS:
        raise GptclfError(f"unknown output format {output_format!r}", hint=f"use one of {', '.join(WRITE_FORMATS)}")
    files = input_files(input_path)
    kind = _input_kind(files, input_path, input_format)
    from ..data.tables import Table

    with Table(files[0], kind) as table:  # the header (JSONL: the first record's keys; Parquet: the schema)
        columns = list(table.columns)
    if text_column not in columns:
        raise GptclfError(f"{files[0]} has no text column {text_column!r}; its columns are {columns[:50]}",
                          hint="pass --text-column NAME")
    run = check_run(run)
    clash = [c for c in _output_columns(run) if c in columns]
    if clash:
        raise GptclfError(f"{files[0]} already has column(s) {clash} that the prediction adds",
                          hint="rename those columns in the input")
    out = Path(output_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptclfError(f"--output {out} exists and is not an empty directory",
                          hint="--engine ray writes a directory of files: name a new one")
    return Job(files, kind, columns, run, out)


def check_resources(ray: Any, workers: int, cpus_per_worker: float, gpus_per_worker: float, can_grow: bool) -> None:
    """The workers' CPUs and GPUs, plus one CPU for Ray Data's read and write tasks, must fit the
    instance: when the actors take every CPU the read tasks never run and the job waits forever.
    A fixed instance (a local one) is an error; a cluster that ``can_grow`` (an autoscaler may
    add nodes) only a warning line."""
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker + 1, "GPU": workers * gpus_per_worker}
    short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need
             if need[k] and need[k] > have.get(k, 0) + 1e-9]
    if not short:
        return
    what = (f"{workers} worker(s) with {cpus_per_worker:g} CPU(s) and {gpus_per_worker:g} GPU(s) each, plus one "
            f"CPU for reading and writing, need " + " and ".join(short))
    hint = "lower --workers or --cpus-per-worker (a fraction such as 0.5 is allowed), or add nodes"
    if not can_grow:
        raise GptclfError(what, hint=hint)
    warnings.warn(f"{what}: the job waits until the cluster grows ({hint})", stacklevel=2)


def check_run(run: str | Path) -> str:
    """``run`` as an absolute path, once its config.json reads and its model.safetensors has a
    readable header (what every actor will load; a damaged run fails here, not on each actor)."""
    from safetensors import safe_open

    from ..files import file_inside
    from ..rundir.load import read_run_config

    path = Path(run).expanduser().resolve()
    read_run_config(path)
    weights = file_inside(path, "model.safetensors")
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - missing, truncated or not safetensors: one user problem
        raise GptclfError(f"{path}: cannot read model.safetensors ({str(e)[:200]})",
                          hint="is this a gptclf run directory? train one with 'gptclf train'") from None
    return str(path)


def _input_kind(files: list[Path], path: str | Path, fmt: str | None) -> str:
    """The one format of ``files`` (``fmt``, else their suffixes) that Ray Data reads."""
    kinds = {fmt} if fmt else {detect_format(f) for f in files}
    if len(kinds) > 1 or not kinds <= set(READ_FORMATS):
        raise GptclfError(f"--input {path}: --engine ray reads one of {', '.join(READ_FORMATS)}, "
                          f"not {', '.join(sorted(str(k) for k in kinds))}",
                          hint="give the files a suffix (.csv, .tsv, .jsonl, .parquet) or pass --format")
    return kinds.pop()


def read_tables(path: str | Path, fmt: str | None = None) -> Any:
    """A ``ray.data.Dataset`` of the rows of ``path`` (see :func:`input_files`), in CSV, TSV,
    JSONL or Parquet (``fmt``, else from the suffixes, all files alike). CSV/TSV cells are read
    as strings, as ``gptclf predict --input`` reads them (no type guessing: ``007`` stays ``007``)."""
    files = input_files(path)
    kind = _input_kind(files, path, fmt)
    from ..data.tables import Table

    with Table(files[0], kind) as table:
        return _read(files, kind, list(table.columns))


def _read(files: list[Path], kind: str, columns: list[str]) -> Any:
    ray = require_ray()
    names = [str(f) for f in files]
    if kind == "parquet":
        return ray.data.read_parquet(names)
    if kind == "jsonl":
        return ray.data.read_json(names, lines=True)
    import pyarrow as pa
    from pyarrow import csv

    # Every column as text (the header names them), as gptclf predict --input reads a CSV.
    return ray.data.read_csv(names, parse_options=csv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
                             convert_options=csv.ConvertOptions(column_types={c: pa.string() for c in columns}))


def predict_files(input_path: str | Path, run: str | Path, output_dir: str | Path, *, input_format: str | None = None,
                  output_format: str = "parquet", text_column: str = "text", **options: Any) -> BatchResult:
    """``gptclf predict --engine ray``: :func:`check_job` (before Ray is touched), read
    ``input_path``, :func:`predict` (``options``), write ``output_dir`` in ``output_format``,
    rows in input order (Ray's ``preserve_order``)."""
    job = check_job(input_path, run, output_dir, input_format=input_format, output_format=output_format,
                    text_column=text_column)
    ray = require_ray()
    t0 = time.perf_counter()
    execution = ray.data.DataContext.get_current().execution_options
    keep, execution.preserve_order = execution.preserve_order, True
    try:
        scored = predict(_read(job.files, job.kind, job.columns), job.run, output_format=output_format,
                         text_column=text_column, **options)
        getattr(scored, f"write_{'json' if output_format == 'jsonl' else output_format}")(str(job.out.resolve()))
    finally:
        execution.preserve_order = keep
    return BatchResult(_count_rows(job.out, output_format), 0, time.perf_counter() - t0, job.out)


def _count_rows(out: Path, fmt: str) -> int:
    """Rows written (Parquet: from the files' footers, nothing is read)."""
    import pyarrow.dataset as pds

    files = [str(f) for f in sorted(out.iterdir()) if f.is_file() and not f.name.startswith((".", "_"))]
    if fmt == "jsonl":
        return sum(sum(1 for _ in open(f, "rb")) for f in files)
    return pds.dataset(files, format=fmt).count_rows()
