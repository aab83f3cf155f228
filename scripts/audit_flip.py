#!/usr/bin/env python
"""The flip experiments of docs/audit.md, each gptclf command run as a user runs it (its own
process, wall time measured around it):

1. **5 % flip**: every SMS message (5,574), 5 % of the labels flipped at random (seeded, the rows
   recorded in flips.json). ``gptclf audit`` on that file; precision among the K most suspicious
   rows (K = rows flipped) and recall of the flipped rows in the top 2K; the wall time of the audit
   side by side with one ``gptclf train`` on the same file, and their ratio. The duplicates and
   leaks the audit finds in the collection itself (flipping labels changes no text).
2. **10 % flip, --drop-label-issues**: a clean stratified 80/20 cut (seeded); 10 % of the 80 %'s
   labels flipped. Test accuracy on the clean 20 % of ``gptclf train`` on the clean 80 %, on the
   noisy 80 %, and on the noisy 80 % with ``--drop-label-issues`` from an audit of it; the share of
   the accuracy the noise cost that dropping recovers.

    python scripts/audit_flip.py --model smollm2-135m --audit-epochs 1,2,5 --out /tmp/audit-flip   # the measurement
    python scripts/audit_flip.py --tiny --out /tmp/audit-flip-tiny                     # does it run (minutes)

``--tiny`` writes a 2-block GPT-2 with random weights and uses 600 messages: it checks the
script, it measures nothing. Other options (``--batch-size 16``, ``--device cuda``) go to every
gptclf command.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_SMS = ROOT.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"

from gptclf.data.sms_spam import read_sms_spam  # noqa: E402
from gptclf.data.splits import stratified_split  # noqa: E402


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    return path


def flip(rows: list[tuple[str, str]], frac: float, seed: int) -> tuple[list[tuple[str, str]], list[int]]:
    """``rows`` with ``frac`` of the labels flipped to the other class (two classes), and which."""
    labels = sorted({lab for _, lab in rows})
    chosen = sorted(random.Random(seed).sample(range(len(rows)), round(frac * len(rows))))
    out = list(rows)
    for i in chosen:
        text, lab = out[i]
        out[i] = (text, labels[1 - labels.index(lab)])
    return out, chosen


def gptclf(*args: str) -> float:
    """Run ``gptclf ARGS`` in its own process; its wall time in seconds."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gptclf", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"gptclf {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return seconds


def test_accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["test_accuracy"])


def ranked_rows(audit_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(audit_dir / "audit.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def five_percent(a: argparse.Namespace, rows: list[tuple[str, str]], common: list[str], out: Path) -> dict:
    noisy, flipped = flip(rows, a.flip_frac, a.seed)
    data = write_jsonl(out / "sms-flip5.jsonl", noisy)
    (out / "flips.json").write_text(json.dumps({"seed": a.seed, "frac": a.flip_frac, "rows": flipped}))
    train_s = gptclf("train", "--data", str(data), *common, "--out", str(out / "train5"))
    result = {"rows": len(rows), "flipped": len(flipped), "train_seconds": train_s, "audits": []}
    for epochs in a.audit_epochs:  # the effect of --audit-epochs on quality and time
        where = out / f"audit5-epochs{epochs or 'recipe'}"
        audit_s = gptclf("audit", "--data", str(data), *common, *audit_options(a, epochs), "--out", str(where))
        result["audits"].append({"audit_epochs": epochs or "recipe", "audit_seconds": audit_s,
                                 "audit_over_train": audit_s / train_s, **scores(ranked_rows(where), flipped)})
    return result


def scores(ranked: list[dict[str, str]], flipped: list[int]) -> dict:
    """Precision in the top K, recall in the top 2K, and what else the audit found."""
    order = [int(r["row"]) for r in ranked]
    k, truth = len(flipped), set(flipped)
    dup = [r for r in ranked if "duplicate" in r["issues"].split(";")]
    leak = [r for r in ranked if "leak" in r["issues"].split(";")]
    return {"precision_top_k": len(set(order[:k]) & truth) / k, "recall_top_2k": len(set(order[:2 * k]) & truth) / k,
            "flagged_label": sum(r["issue"] == "label" for r in ranked),
            "flagged_label_flipped": sum(r["issue"] == "label" and int(r["row"]) in truth for r in ranked),
            "duplicates": len(dup), "duplicates_exact": sum(float(r["similarity"]) == 1.0 for r in dup),
            "leaks": len(leak), "leaks_exact": sum(float(r["similarity"]) == 1.0 for r in leak),
            "outliers": sum("outlier" in r["issues"].split(";") for r in ranked)}


def audit_options(a: argparse.Namespace, epochs: int | None) -> list[str]:
    return ["--folds", str(a.folds)] + (["--audit-epochs", str(epochs)] if epochs else [])


def ten_percent(a: argparse.Namespace, rows: list[tuple[str, str]], common: list[str], out: Path) -> dict:
    from gptclf.data.tables import Example

    examples = [Example(t, lab, i) for i, (t, lab) in enumerate(rows)]
    train, _, test = stratified_split(examples, 0.8, 0.0, a.seed)
    clean = [(e.text, e.label) for e in train]
    noisy, flipped = flip(clean, a.noise_frac, a.seed + 1)
    files = {"clean": write_jsonl(out / "train-clean.jsonl", clean), "noisy": write_jsonl(out / "train-noisy.jsonl", noisy)}
    test_file = str(write_jsonl(out / "test-clean.jsonl", [(e.text, e.label) for e in test]))
    acc = {}
    for name in ("clean", "noisy"):
        gptclf("train", "--data", str(files[name]), "--test", test_file, *common, "--out", str(out / f"train-{name}"))
        acc[name] = test_accuracy(out / f"train-{name}")
    gptclf("audit", "--data", str(files["noisy"]), *common, *audit_options(a, a.audit_epochs[0]),
           "--out", str(out / "audit10"))
    gptclf("train", "--data", str(files["noisy"]), "--test", test_file, *common, "--drop-label-issues",
           str(out / "audit10" / "audit.csv"), "--out", str(out / "train-dropped"))
    acc["dropped"] = test_accuracy(out / "train-dropped")
    dropped = json.loads((out / "train-dropped" / "config.json").read_text())["data"]["dropped_by_audit"]
    cost = acc["clean"] - acc["noisy"]
    return {"train_rows": len(clean), "test_rows": len(test), "flipped": len(flipped),
            "dropped": dropped["n_rows"], "dropped_flipped": len(set(dropped["rows"]) & set(flipped)),
            "test_accuracy": acc, "recovered": (acc["dropped"] - acc["noisy"]) / cost if cost > 0 else float("nan")}


def tiny_model(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_gpt2_dir

    return tiny_gpt2_dir(out / "tiny-gpt2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sms", default=str(DEFAULT_SMS), help="the SMS Spam Collection file")
    p.add_argument("--out", required=True, help="a new folder for the files, runs and audits")
    p.add_argument("--seed", type=int, default=123, help="seed of the flips and of the clean cut")
    p.add_argument("--flip-frac", type=float, default=0.05)
    p.add_argument("--noise-frac", type=float, default=0.10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--audit-epochs", default="",
                   help="comma-separated --audit-epochs to compare in the 5%% experiment (the first is used for "
                        "the 10%% one); default: the recipe's epochs")
    p.add_argument("--only", choices=("5", "10"), help="run one experiment")
    p.add_argument("--tiny", action="store_true", help="a tiny random GPT-2 and 600 messages: checks the script only")
    a, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    rows = [(e.text, e.label) for e in read_sms_spam(Path(a.sms))]
    model = a.model
    if a.tiny:
        rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), 600))]
        model = str(tiny_model(out))
        extra = ["--trainable", "last_layer", "--pooling", "mean", "--lr", "1e-2", "--epochs", "2", *extra]
    common = ["--model", model, "--quiet", "--seed", str(a.seed), *extra]
    a.audit_epochs = [int(x) for x in a.audit_epochs.split(",") if x.strip()] or [None]
    result = {"model": model, "command": " ".join(sys.argv)}
    if a.only in (None, "5"):
        result["flip5"] = five_percent(a, rows, common, out)
    if a.only in (None, "10"):
        result["flip10"] = ten_percent(a, rows, common, out)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    f5 = result.get("flip5")
    if f5:
        print(f"5% flip ({f5['flipped']} of {f5['rows']} rows), one gptclf train {f5['train_seconds']:.0f}s:")
        for r in f5["audits"]:
            print(f"  --audit-epochs {r['audit_epochs']}: precision in top K {r['precision_top_k']:.1%} (target 80%), "
                  f"recall in top 2K {r['recall_top_2k']:.1%} (target 90%), audit {r['audit_seconds']:.0f}s = "
                  f"{r['audit_over_train']:.2f}x train (target 2.5x); {r['duplicates']} duplicates "
                  f"({r['duplicates_exact']} exact), {r['leaks']} leaks ({r['leaks_exact']} exact), "
                  f"{r['outliers']} outliers")
    f10 = result.get("flip10")
    if f10:
        acc = f10["test_accuracy"]
        print(f"10% flip: clean test accuracy {acc['clean']:.2%}, noisy {acc['noisy']:.2%}, with "
              f"--drop-label-issues {acc['dropped']:.2%}: {f10['recovered']:.0%} of the cost recovered (target 50%)")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
