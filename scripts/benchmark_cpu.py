#!/usr/bin/env python
"""CPU inference, every backend and precision side by side on the same texts, in one run.

    python scripts/benchmark_cpu.py --model runs/latest \\
        --data ../shared/data/sms_spam_collection/SMSSpamCollection --serve

For each path (torch fp32, onnxruntime fp32, onnxruntime int8 = ``--int8``) it loads the
run, warms up, then times ``Classifier.predict`` on the same N texts (default: the run's
chapter-6 test split for SMS data, else N random rows) and prints texts/s, the speed-up
over torch fp32, label flips and the largest probability change against torch fp32, and
accuracy when the texts have labels. ``--serve`` also starts ``gptclf serve`` for each
path and drives it with ``scripts/loadtest.py`` (16 clients, one text per request by
default): requests/s, p50 and p99. The ONNX export (into the cache) happens before any
timing. Run it on an idle machine: it measures whatever else the CPU is doing too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from gptclf.inference.classifier import MAX_BATCH_TOKENS, Classifier  # noqa: E402

PATHS = {  # name: Classifier.load / gptclf serve arguments
    "torch fp32": {"backend": "torch"},
    "onnxruntime fp32": {"backend": "onnxruntime"},
    "onnxruntime int8": {"backend": "onnxruntime", "quantize": "int8"},
    # The int8 path gptclf replaced, rebuilt here (never in the package) so the speed-up of
    # today's --int8 over it is measured side by side: torch.ao dynamic int8, per channel,
    # the family's outlier-sensitive linears kept fp32. No server: serve never ran it again.
    "torch.ao int8 (old)": {"backend": "torch", "legacy": "torch.ao int8"},
}


def torch_ao_int8(clf: Classifier) -> None:
    """The replaced ``--int8``: ``torch.ao.quantization.quantize_dynamic`` (deprecated) on every
    block's linears but the family's ``int8_fp32_linears``, with per-channel weight scales."""
    from torch import nn

    from gptclf.models import registry

    blocks = clf.model.backbone.trf_blocks
    skip = registry.family(clf.model.backbone.config.arch).int8_fp32_linears or ("\0",)
    q = torch.ao.quantization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(blocks)):
            names = {n: q.per_channel_dynamic_qconfig for n, m in blocks[i].named_modules()
                     if isinstance(m, nn.Linear) and not n.endswith(skip)}
            blocks[i] = q.quantize_dynamic(blocks[i], names, dtype=torch.qint8)


def read_texts(args: argparse.Namespace, clf: Classifier) -> tuple[list[str], list[str] | None]:
    """The run's chapter-6 test split for SMS data; else ``--n`` seeded random rows of the table."""
    from gptclf.data.sms_spam import SMS_SPAM_NAMES
    from gptclf.data.splits import load_splits
    from gptclf.data.tables import read_table

    train = clf.run_config.train or {}
    if args.data.lower() in SMS_SPAM_NAMES or "SMSSpamCollection" in args.data:
        rows = load_splits(args.data, seed=train.get("seed", 123), balance=train.get("balance", "undersample")).test
    else:
        rows = read_table(args.data, args.text_column, args.label_column)
    rows = list(rows)
    if len(rows) > args.n:
        rows = random.Random(0).sample(rows, args.n)
    labels = [e.label for e in rows]
    return [e.text for e in rows], (labels if all(lab in clf.labels for lab in labels) else None)


def time_path(args: argparse.Namespace, kwargs: dict, texts: list[str]) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` texts/s of ``Classifier.predict_proba`` after one warm-up pass."""
    kwargs = dict(kwargs)
    legacy = kwargs.pop("legacy", None)
    clf = Classifier.load(args.model, device="cpu", threads=args.threads, **kwargs)
    if legacy:
        torch_ao_int8(clf)
    if args.max_batch_tokens >= 0:
        clf.max_batch_tokens = args.max_batch_tokens or None
    clf.predict_proba(texts[: args.batch_size], args.batch_size)
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        probs = clf.predict_proba(texts, args.batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best, probs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_load(args: argparse.Namespace, kwargs: dict) -> dict:
    """Start ``gptclf serve`` for one path, wait for it, run the load test, stop it."""
    from loadtest import run_load

    port = free_port()
    flags = ["--backend", kwargs["backend"], "--threads", str(args.threads)]
    flags += ["--int8"] if kwargs.get("quantize") else []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gptclf", "serve", "--model", str(args.model), "--port", str(port),
                             "--device", "cpu", "--log-level", "warning", *flags], env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gptclf serve {' '.join(flags)} exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gptclf serve did not start in 300 s") from None
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        asyncio.run(run_load(url, args.concurrency, args.concurrency * 4, 1))  # warm-up
        r = asyncio.run(run_load(url, args.concurrency, args.requests, 1))
        return {"rps": r.requests_per_second, "p50": r.p50_ms, "p99": r.p99_ms, "errors": r.errors}
    finally:
        proc.terminate()
        proc.wait(30)


def print_table(rows: list[dict], serve: bool) -> None:
    head = f"{'path':<18}{'texts/s':>9}{'vs fp32':>9}{'flips':>7}{'max dp':>9}{'acc %':>8}"
    head += f"{'req/s':>8}{'vs fp32':>9}{'p50 ms':>8}{'p99 ms':>8}" if serve else ""
    print(head)
    base, sbase = rows[0]["tps"], rows[0].get("serve", {}).get("rps")
    for r in rows:
        acc = f"{r['acc'] * 100:>8.2f}" if r["acc"] is not None else f"{'':>8}"
        line = f"{r['name']:<18}{r['tps']:>9.1f}{r['tps'] / base:>8.2f}x{r['flips']:>7d}{r['dp']:>9.4f}{acc}"
        s = r.get("serve")
        if serve and s:
            line += f"{s['rps']:>8.1f}{s['rps'] / sbase:>8.2f}x{s['p50']:>8.0f}{s['p99']:>8.0f}"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run directory written by 'gptclf train'")
    p.add_argument("--data", default="sms-spam", help="SMS Spam Collection (its test split) or a labelled table")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--n", type=int, default=300, help="texts to time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads (0: onnxruntime's one per physical core, torch's default)")
    p.add_argument("--max-batch-tokens", type=int, default=-1,
                   help="padded tokens per forward pass (0: no budget; default: the Classifier's)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path (the best counts)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of: {', '.join(PATHS)}")
    p.add_argument("--serve", action="store_true", help="also load-test 'gptclf serve' for each path")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=1000)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    names = [n.strip() for n in args.paths.split(",")]
    if names[0] != "torch fp32" or any(n not in PATHS for n in names):
        raise SystemExit(f"--paths: start with 'torch fp32', then any of {', '.join(PATHS)}")
    torch_clf = Classifier.load(args.model, device="cpu", backend="torch")
    texts, labels = read_texts(args, torch_clf)
    y = None if labels is None else np.array([torch_clf.labels.index(x) for x in labels])
    del torch_clf
    Classifier.load(args.model, backend="onnxruntime")  # export into the cache before timing
    budget = MAX_BATCH_TOKENS if args.max_batch_tokens < 0 else (args.max_batch_tokens or None)
    print(f"{len(texts)} texts, batch {args.batch_size}, max batch tokens {budget}, torch threads "
          f"{torch.get_num_threads()}, cpu count {os.cpu_count()}, load average {_load()}", flush=True)
    rows, ref = [], None
    for name in names:
        tps, probs = time_path(args, PATHS[name], texts)
        ref = probs if ref is None else ref
        row = {"name": name, "tps": tps, "flips": int((probs.argmax(1) != ref.argmax(1)).sum()),
               "dp": float(np.abs(probs - ref).max()),
               "acc": None if y is None else float((probs.argmax(1) == y).mean())}
        if args.serve and "legacy" not in PATHS[name]:
            row["serve"] = serve_load(args, PATHS[name])
        rows.append(row)
        print(f"  {name}: {tps:.1f} texts/s", flush=True)
    print_table(rows, args.serve)
    by_name = {r["name"]: r["tps"] for r in rows}
    if "onnxruntime int8" in by_name and "torch.ao int8 (old)" in by_name:
        print(f"onnxruntime int8 (--int8) vs the replaced torch.ao int8: "
              f"{by_name['onnxruntime int8'] / by_name['torch.ao int8 (old)']:.2f}x")
    print(f"load average at the end: {_load()} (anything above ~0.1 on an idle machine means the CPU was shared)")


def _load() -> str:
    """The 1/5/15-minute load averages: a busy machine makes every figure above meaningless."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


if __name__ == "__main__":
    main()
