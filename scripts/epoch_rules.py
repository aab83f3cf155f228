"""Which epoch to keep? Every epoch's predictions per training seed, and each rule's test accuracy.

    python scripts/epoch_rules.py --seeds 123,1,2,3,4,5 --out epochs/ -- \
        --model smollm2-135m --data ../shared/data/sms_spam_collection/SMSSpamCollection

Trains the recipe once per seed exactly as ``gptclf train`` does (one model load, the frozen
blocks cached once: ``seed_spread.seeded_models``), records the validation and test logits after every epoch in
``OUT/seed-S.npz``, then applies each rule for the kept epoch to the same epochs and prints
the test accuracy it would have given: the last epoch (the book), the top validation accuracy
with ties to the lower loss (gptclf's rule before the current one), the lowest validation
loss, the lowest loss after temperature scaling, and the default (the latest epoch within
noise of the top, :class:`gptclf.training.controls.EarlyStopping`). Seeds already recorded in
``OUT`` are not trained again. docs/accuracy-defaults.md has the results.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gptclf.cli import build_parser
from gptclf.cli.train import train_config
from gptclf.training.controls import KEEP_BEST_NOISE_Z, EarlyStopping
from gptclf.training.evaluate import predict_logits
from gptclf.training.loop import Trainer
from gptclf.training.recipe import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_spread import seeded_models  # noqa: E402  (the same per-seed models as seed_spread.py)

Rule = Callable[[np.ndarray, np.ndarray], int]  # (epoch x text x class logits, labels) -> epoch index


def record(train_opts: list[str], seeds: list[int], out: Path) -> None:
    """Train once per seed (not yet in ``out``), saving every epoch's val/test logits."""
    todo = [s for s in seeds if not (out / f"seed-{s}.npz").exists()]
    if not todo:
        return
    cfg = train_config(build_parser().parse_args(["train", *train_opts])).resolved()
    out.mkdir(parents=True, exist_ok=True)
    for seed, model, feeds, enc, _, device, precision in seeded_models(cfg, todo):
        t0 = time.perf_counter()
        run_cfg = replace(cfg, seed=seed, progress=False)
        trainer = Trainer(model, make_optimizer(model, run_cfg, device), feeds["train"], feeds["val"],
                          enc.datasets["train"], enc.datasets["val"], run_cfg, device, precision, lambda s: None)
        logits: dict[str, list[np.ndarray]] = {"val": [], "test": []}
        for epoch in range(cfg.epochs):
            trainer.fit(until=epoch + 1)  # no stopper: training is the same whichever epoch is kept
            for name, per_epoch in logits.items():
                ds = enc.datasets[name]
                per_epoch.append(predict_logits(model, feeds[name], len(ds), cfg.eval_batch_size, ds.lengths,
                                                device, precision))
        np.savez(out / f"seed-{seed}.npz", **{k: np.stack(v) for k, v in logits.items()},
                 **{f"y_{k}": enc.datasets[k].labels.numpy() for k in logits})
        print(f"seed {seed}: recorded {cfg.epochs} epochs in {time.perf_counter() - t0:.0f}s", flush=True)


def _nll(logits: np.ndarray, y: np.ndarray, t: float = 1.0) -> float:
    z = logits / t
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(-1) == y).mean())


def _calibrated_nll(logits: np.ndarray, y: np.ndarray) -> float:
    return min(_nll(logits, y, t) for t in np.exp(np.linspace(np.log(0.05), np.log(20), 80)))


def _within_noise(val: np.ndarray, y: np.ndarray) -> int:
    """The default rule, run through gptclf's own EarlyStopping."""
    es = EarlyStopping("val_accuracy", None, noise_z=KEEP_BEST_NOISE_Z)
    model = torch.nn.Linear(1, 1)
    for e, logits in enumerate(val):
        es.update(e + 1, _acc(logits, y), model, _nll(logits, y), torch.from_numpy(logits.argmax(-1) == y))
    return int(es.best_epoch) - 1


RULES: dict[str, Rule] = {
    "last epoch (the book)": lambda val, y: len(val) - 1,
    "top accuracy, ties to lower loss": lambda val, y: min(range(len(val)), key=lambda e: (-_acc(val[e], y),
                                                                                           _nll(val[e], y))),
    "lowest validation loss": lambda val, y: min(range(len(val)), key=lambda e: _nll(val[e], y)),
    "lowest loss after temperature": lambda val, y: min(range(len(val)), key=lambda e: _calibrated_nll(val[e], y)),
    "latest within noise (default)": _within_noise,
}


def report(out: Path, seeds: list[int]) -> None:
    runs = {s: np.load(out / f"seed-{s}.npz") for s in seeds}
    print(f"{'rule':34} {'test mean':>9} {'stdev':>6}  per seed (kept epoch)")
    for name, rule in RULES.items():
        kept = {s: rule(r["val"], r["y_val"]) for s, r in runs.items()}
        accs = [_acc(runs[s]["test"][e], runs[s]["y_test"]) * 100 for s, e in kept.items()]
        per_seed = "  ".join(f"{s}: {a:.2f} ({e + 1})" for (s, e), a in zip(kept.items(), accs))
        print(f"{name:34} {np.mean(accs):9.2f} {np.std(accs, ddof=1) if len(accs) > 1 else 0.0:6.2f}  {per_seed}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_opts = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="123,1,2,3,4,5", help="training seeds, comma-separated")
    ap.add_argument("--out", required=True, help="folder for the per-seed epoch logits")
    args = ap.parse_args(own)
    seeds = [int(s) for s in args.seeds.split(",")]
    record(train_opts, seeds, Path(args.out))
    report(Path(args.out), seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
