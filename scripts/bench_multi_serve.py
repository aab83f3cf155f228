#!/usr/bin/env python
"""Several models from one ``gptclf serve`` against one server per model, side by side in one run
(docs/serving.md, "Several models"): every text to all the models.

    python scripts/bench_multi_serve.py --model spam=runs/spam --model spam2=runs/spam-depth2 \\
        --model tags=runs/tags --concurrency 16 --requests 600

- shared: one server holding every model; each request ``{"model": "*", "texts": [text]}``.
- separate: one ``gptclf serve`` per model; each client asks every server in turn for the same
  text (the latency of a text is that of all its answers).

Per setup it prints texts/s (a text counts once it has every model's answer), p50/p99 latency and
resident memory (VmRSS of the server processes after the load; separate: their sum), then the
ratios. The issue's targets for three SmolLM2-135M runs of one base on 2 CPU cores: shared >= 2x
the texts/s of separate at an equal or lower p99, and shared's memory <= 1.3x that of one server
with one model (printed as ``rss shared / one model``).

``--quick`` checks the script itself in a minute: three tiny random runs of one base (different
depths, one multi-label), a few requests. Each server runs as its own process, started and stopped
here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from loadtest import MESSAGES, _Conn, percentile  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(specs: list[str], *flags: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """A ``gptclf serve`` of ``specs`` on a free port, until the block ends: (port, process)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [a for s in specs for a in ("--model", s)]
    proc = subprocess.Popen([sys.executable, "-m", "gptclf", "serve", *args, "--port", str(port),
                             "--log-level", "warning", *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gptclf serve {' '.join(specs)} exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gptclf serve did not start in 300 s") from None
                time.sleep(0.2)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    """The process's resident memory now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(targets: list[tuple[int, object]], concurrency: int, requests: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients, ``requests`` texts in all; each text is sent to every
    ``(port, model)`` of ``targets`` in turn, on the client's keep-alive connections."""
    latencies: list[float] = []
    issued = errors = 0

    async def client() -> None:
        nonlocal issued, errors
        conns = {port: _Conn("127.0.0.1", port) for port, _ in targets}
        try:
            while issued < requests:
                text = MESSAGES[issued % len(MESSAGES)]
                issued += 1
                t = time.perf_counter()
                for port, model in targets:
                    status, _ = await conns[port].post("/v1/classify", json.dumps({"model": model, "texts": [text]}).encode())
                    errors += status != 200
                latencies.append(time.perf_counter() - t)
        finally:
            for c in conns.values():
                await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    lat = sorted(x * 1000 for x in latencies)
    return {"texts_per_s": len(lat) / seconds, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "errors": errors}


def measure(specs: list[str], concurrency: int, requests: int, flags: list[str]) -> dict[str, dict[str, float]]:
    names = [s.partition("=")[0] for s in specs]
    out: dict[str, dict[str, float]] = {}
    with server(specs, *flags) as (port, proc):
        asyncio.run(load([(port, "*")], concurrency, max(concurrency, requests // 10)))  # warm up
        out["shared"] = asyncio.run(load([(port, "*")], concurrency, requests)) | {"rss_mb": rss_mb(proc.pid)}
    with ExitStack() as stack:
        servers = [stack.enter_context(server([s], *flags)) for s in specs]
        targets = [(port, name) for (port, _), name in zip(servers, names)]
        asyncio.run(load(targets, concurrency, max(concurrency, requests // 10)))
        out["separate"] = asyncio.run(load(targets, concurrency, requests)) | {
            "rss_mb": sum(rss_mb(p.pid) for _, p in servers), "one_model_rss_mb": rss_mb(servers[0][1].pid)}
    return out


def report(r: dict[str, dict[str, float]], n_models: int) -> dict[str, float]:
    print(f"{'':10} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8} {'errors':>6}")
    for name, m in r.items():
        print(f"{name:10} {m['texts_per_s']:9.1f} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f} {m['rss_mb']:8.0f} "
              f"{int(m['errors']):6d}")
    sh, se = r["shared"], r["separate"]
    ratios = {"texts_per_s shared / separate": sh["texts_per_s"] / se["texts_per_s"],
              "p99 shared / separate": sh["p99_ms"] / se["p99_ms"],
              "rss shared / one model": sh["rss_mb"] / se["one_model_rss_mb"],
              "rss shared / separate": sh["rss_mb"] / se["rss_mb"]}
    print(f"every text to all {n_models} models; ratios:")
    for k, v in ratios.items():
        print(f"  {k:32} {v:6.2f}")
    return ratios


def quick_runs(work: Path) -> list[str]:
    """Three tiny random runs of one base: frozen to block 1 and 0, and a multi-label one."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_run, tiny_gpt2_dir

    base = tiny_gpt2_dir(work / "base", n_layer=4, n_embd=32, n_head=2, n_positions=64)
    return [f"spam={make_run(work / 'spam', base, '1', 1)}", f"deep={make_run(work / 'deep', base, '2', 2)}",
            f"tags={make_run(work / 'tags', base, '1', 3, labels=('x', 'y'), task='multi-label', thresholds={'x': 0.5, 'y': 0.5})}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN", help="a run to serve (repeat)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=600, help="texts per setup (each to every model)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="check the script: three tiny runs, a few texts")
    ap.add_argument("serve_flags", nargs="*", help="after --: flags for every gptclf serve (e.g. --device cpu)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        specs = quick_runs(Path(tmp)) if args.quick else args.model
        if len(specs) < 2 or any("=" not in s for s in specs):
            ap.error("give two or more --model NAME=RUN (or --quick)")
        concurrency, requests = (2, 12) if args.quick else (args.concurrency, args.requests)
        r = measure(specs, concurrency, requests, args.serve_flags)
        ratios = report(r, len(specs))
    if args.json:
        Path(args.json).write_text(json.dumps({"setups": r, "ratios": ratios}, indent=2))
    return 1 if any(m["errors"] for m in r.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
