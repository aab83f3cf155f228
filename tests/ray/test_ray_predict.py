"""gptclf.ray.predict and gptclf predict --engine ray on a local Ray instance (2 CPUs): the
output equals gptclf predict --input's, every row exactly once, a killed actor included."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from gptclf.inference.batch_files import predict_file
from gptclf.inference.classifier import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["WINNER!! You have won a £1000 prize. Call now", "Ok lar... Joking wif u oni...", "",
         "Are we meeting for lunch?", 'She said "hi, there"\nand left', "007", " ", "long " * 300]
PROB_TOL = 1.1e-6  # both sides are rounded to 6 decimals: equal scores differ by at most 1e-6 after it


def _local(run: Path, src: Path, dst: Path) -> list[dict]:
    predict_file(Classifier.load(run, device="cpu", threads=1), src, dst)
    if dst.suffix == ".jsonl":
        return [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    with open(dst, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _same(ray_rows: list[dict], local_rows: list[dict], columns: list[str]) -> None:
    assert len(ray_rows) == len(local_rows)
    for a, b in zip(ray_rows, local_rows):
        for c in columns:
            if c.startswith("p_") or c == "predicted_score":
                assert float(a[c]) == pytest.approx(float(b[c]), abs=PROB_TOL), c
            else:
                assert a[c] == b[c], (c, a, b)


def test_predict_equals_local_on_the_same_file(ray_local: Any, random_run: Path, tmp_path: Path) -> None:
    import gptclf.ray as gray

    rows = [{"id": str(i), "text": t, "note": f"n{i}"} for i, t in enumerate(TEXTS * 4)]
    src = _write_csv(tmp_path / "in.csv", rows)
    local = _local(random_run, src, tmp_path / "local.csv")
    out = gray.predict(gray.read_tables(src), random_run, rows_per_batch=5, output_format="csv").to_pandas()
    got = sorted(out.to_dict("records"), key=lambda r: int(r["id"]))
    assert [r["id"] for r in got] == [r["id"] for r in rows]  # every row exactly once
    assert list(out.columns) == list(local[0])  # the same columns, in the same order
    _same(got, local, list(local[0]))


def test_bad_rows_are_flagged_as_in_local_prediction(ray_local: Any, random_run: Path, tmp_path: Path) -> None:
    import gptclf.ray as gray

    texts = ["fine", "\ud800 a lone surrogate", "", "   ", "huge " * 5000, None]
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    local = _local(random_run, src, tmp_path / "local.jsonl")
    got = sorted(gray.predict(ray_local.data.from_items(rows), random_run).take_all(), key=lambda r: r["id"])
    _same(got, local, ["id", "predicted_label", "predicted_score", "p_a", "p_b", "truncated"])
    assert [r["truncated"] for r in got] == [False, False, False, False, True, False]


def test_cli_on_a_sharded_directory(ray_local: Any, random_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from gptclf.cli import main

    rows = [{"id": str(i), "text": f"{t} #{i}"} for i, t in enumerate(TEXTS * 5)]
    shards = tmp_path / "shards"
    shards.mkdir()
    bounds = [0, 14, 27, len(rows)]  # three shards; the marker file Spark and Ray writers leave is skipped
    for k in range(3):
        _write_csv(shards / f"part-{k}.csv", rows[bounds[k]:bounds[k + 1]])
    (shards / "_SUCCESS").write_text("")
    whole = _write_csv(tmp_path / "whole.csv", [r for f in sorted(shards.glob("*.csv"))
                                                for r in csv.DictReader(open(f, encoding="utf-8"))])
    local = _local(random_run, whole, tmp_path / "local.csv")
    out = tmp_path / "scored"
    assert main(["predict", "--model", str(random_run), "--input", str(shards), "--output", str(out),
                 "--engine", "ray", "--chunk-size", "4", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"wrote {len(local)} rows to {out} in ") and err.endswith(" rows/s)"), err
    files = sorted(out.glob("*.parquet"))
    got = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert [r["id"] for r in got] == [r["id"] for r in local]  # exactly once, in input order
    got = [r | {"truncated": "true" if r["truncated"] else "false"} for r in got]
    _same(got, local, list(local[0]))


def _kill_one_scorer() -> int | None:
    """SIGKILL one scoring actor's process (Ray titles it after the callable class), as a node
    lost mid-job would; its pid, or None when none runs yet."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "MapBatches(Scorer)" in " ".join(proc.info["cmdline"] or []):
            os.kill(proc.info["pid"], signal.SIGKILL)
            return proc.info["pid"]
    return None


def test_a_killed_actor_loses_no_row_and_repeats_none(ray_local: Any, random_run: Path) -> None:
    import gptclf.ray as gray

    n = 1000
    ds = ray_local.data.from_items([{"id": i, "text": f"message number {i}"} for i in range(n)])
    scored = gray.predict(ds, random_run, rows_per_batch=10, concurrency=2, num_cpus=0.5)
    seen: list[int] = []
    killed, after = None, 0
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        seen += batch.column("id").to_pylist()
        if killed is None:
            killed, after = _kill_one_scorer(), len(seen)
    assert killed is not None and len(seen) > after, "the job ended before an actor was killed: proves nothing"
    assert sorted(seen) == list(range(n))


def _damaged_run(random_run: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(random_run, where)
    weights = where / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut inside the header: no actor could load it
    return where


BAD_JOBS = {  # what is wrong -> (the CLI arguments it changes, what the error says)
    "missing input": ({"--input": "{tmp}/nowhere.csv"}, "no such file"),
    "empty shard directory": ({"--input": "{tmp}/empty"}, "no files in it"),
    "no such run": ({"--model": "{tmp}/norun"}, "does not exist"),
    "not a run": ({"--model": "{tmp}/empty"}, "has no config.json"),
    "damaged weights": ({"--model": "{tmp}/damaged"}, "cannot read model.safetensors"),
    "no text column": ({"--text-column": "body"}, "has no text column 'body'"),
    "unreadable input format": ({"--input": "{tmp}/in.txt"}, "--engine ray reads one of"),
    "output not empty": ({"--output": "{tmp}/full"}, "exists and is not an empty directory"),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_a_bad_job_is_one_line_before_ray_starts(case: str, random_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    import gptclf.ray.cluster as cluster
    from gptclf.cli import main

    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started for a bad job"))
    src = _write_csv(tmp_path / "in.csv", [{"id": "0", "text": "hello"}])
    (tmp_path / "in.txt").write_text("text\nhello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_text("")
    _damaged_run(random_run, tmp_path / "damaged")
    args = {"--model": str(random_run), "--input": str(src), "--output": str(tmp_path / "out")}
    change, message = BAD_JOBS[case]
    args |= {k: v.format(tmp=tmp_path) for k, v in change.items()}
    assert main(["predict", *[a for kv in args.items() for a in kv], "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("gptclf: error: ") and message in first, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2  # the error and its hint
    assert not (tmp_path / "out").exists()


def test_a_bad_output_format_is_refused_before_ray_starts(random_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    import importlib

    from gptclf.cli import main
    from gptclf.errors import GptclfError

    rpredict = importlib.import_module("gptclf.ray.predict")  # the module: gptclf.ray.predict is also the function

    monkeypatch.setattr(rpredict, "require_ray", lambda: pytest.fail("Ray was touched for a bad job"))
    src = _write_csv(tmp_path / "in.csv", [{"id": "0", "text": "hello"}])
    with pytest.raises(GptclfError, match="unknown output format 'xml'"):
        rpredict.predict_files(src, random_run, tmp_path / "out", output_format="xml")
    with pytest.raises(SystemExit) as e:  # the CLI: argparse's own one line, from the choices --help lists
        main(["predict", "--model", str(random_run), "--input", str(src), "--output", str(tmp_path / "o"),
              "--engine", "ray", "--output-format", "xml"])
    assert e.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err


def _read_output(out: Path, fmt: str) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted(f for f in out.iterdir() if not f.name.startswith((".", "_")))
    assert files and all(f.name.endswith("." + ("json" if fmt == "jsonl" else fmt)) for f in files), files
    if fmt == "parquet":
        return [r for f in files for r in pq.read_table(f).to_pylist()]
    if fmt == "jsonl":
        return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    return [r for f in files for r in csv.DictReader(open(f, newline="", encoding="utf-8"))]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_output_format_holds_the_local_prediction(fmt: str, ray_local: Any, random_run: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gptclf.cli import main

    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS * 3)]
    src = _write_csv(tmp_path / "in.csv", rows)
    # The local output of the same format: csv writes truncated as true/false, jsonl and parquet as booleans.
    local = _local(random_run, src, tmp_path / f"local.{'jsonl' if fmt == 'jsonl' else 'csv'}")
    out = tmp_path / "scored"
    assert main(["predict", "--model", str(random_run), "--input", str(src), "--output", str(out),
                 "--engine", "ray", "--output-format", fmt, "--chunk-size", "7", "--quiet"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"wrote {len(rows)} rows to {out}")
    got = _read_output(out, fmt)
    if fmt == "parquet":
        got = [r | {"truncated": "true" if r["truncated"] else "false"} for r in got]
    assert [r["id"] for r in got] == [r["id"] for r in rows]  # every row once, in input order
    assert list(got[0]) == list(local[0])
    _same(got, local, list(local[0]))


def _end_cluster(head: Any, temp_dir: str) -> None:
    """End the ``ray start --head`` this test started: it and every process of its cluster (each
    names the cluster's temp dir in its command line), by pid. Not ``ray stop``: that ends every
    Ray process on the machine, the session's own local instance and other users' included."""
    import psutil

    procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs += psutil.Process(head.pid).children(recursive=True)
    procs = list({p.pid: p for p in procs}.values())
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    head.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    head.wait(timeout=20)


@pytest.fixture
def ray_head() -> Iterator[tuple[dict[str, str], int]]:
    """A real cluster: ``ray start --head`` (2 CPUs, free ports) in a temp dir of its own, which
    ``--address auto`` finds through RAY_TMPDIR; the environment to join it with, and its port."""
    import shutil
    import tempfile
    import time

    from helpers import env_with, free_port

    if shutil.which("ray") is None:
        pytest.skip("the ray command-line tool is not installed")
    temp_dir = tempfile.mkdtemp(prefix="gr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = env_with(RAY_TMPDIR=temp_dir, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    port = free_port()
    ports = ["--port", str(port)] + [a for opt in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                           "--runtime-env-agent-port", "--metrics-export-port", "--ray-client-server-port")
             for a in (opt, str(free_port()))]
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard",
                             "false", "--disable-usage-stats", *ports], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address_file = Path(temp_dir) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 180
        while not address_file.is_file() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if not address_file.is_file():
            pytest.fail(f"ray start --head did not come up (exit {head.poll()})")
        yield env, port
    finally:
        _end_cluster(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_address_auto_joins_a_running_cluster(ray_head: tuple[dict[str, str], int], random_run: Path,
                                              tmp_path: Path) -> None:
    env, port = ray_head
    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS * 2)]
    src = _write_csv(tmp_path / "in.csv", rows)
    local = _local(random_run, src, tmp_path / "local.csv")
    out = tmp_path / "scored"
    r = subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(random_run), "--input", str(src),
                        "--output", str(out), "--engine", "ray", "--address", "auto", "--output-format", "csv",
                        "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    joined = [line for line in r.stderr.splitlines() if "Connecting to existing Ray cluster at address" in line]
    assert joined and joined[0].rstrip().rstrip(".").endswith(f":{port}"), r.stderr[-3000:]  # this head, no other
    got = _read_output(out, "csv")
    assert [g["id"] for g in got] == [row["id"] for row in rows]
    _same(got, local, list(local[0]))


def test_address_auto_without_a_cluster_is_one_line(random_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's own answer when ``auto`` finds nothing (a ConnectionError) becomes one line. Ray is
    stubbed here: for ``auto`` it also joins any Ray instance it detects on the machine (this
    session's own, another user's), so "no cluster" cannot be arranged for real."""
    ray = pytest.importorskip("ray")
    from gptclf.cli import main

    def no_cluster(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    src = _write_csv(tmp_path / "in.csv", [{"id": "0", "text": "hello"}])
    assert main(["predict", "--model", str(random_run), "--input", str(src), "--output", str(tmp_path / "o"),
                 "--engine", "ray", "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("gptclf: error: --address auto: no Ray cluster there (Could not find")
    assert "ray start --head" in err and "Traceback" not in err and len(err.splitlines()) == 2


def test_workers_that_leave_no_cpu_for_reading_are_refused(ray_local: Any, random_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """2 one-CPU workers on the 2-CPU instance: the read tasks would never be scheduled and the
    job would wait forever (it did, in scripts/bench_ray_predict.py); a fixed instance says so."""
    from gptclf.cli import main

    src = _write_csv(tmp_path / "in.csv", [{"id": "0", "text": "hello"}])
    args = ["predict", "--model", str(random_run), "--input", str(src), "--engine", "ray", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "a"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "need 3 CPUs (the cluster has 2)" in err.splitlines()[0] and "Traceback" not in err, err
    assert main([*args, "--output", str(tmp_path / "b"), "--workers", "2", "--cpus-per-worker", "0.5"]) == 0
