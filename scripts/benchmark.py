#!/usr/bin/env python
"""Side-by-side speed benchmark, in one process and on the same data and initial weights:

* ``ours``: gptclf's default path (on CUDA: static shapes and CUDA graphs, ``--static-shapes auto``);
* ``eager``: the same with ``--static-shapes off`` (what the default was before the graphs);
* ``reference``: ``--reference``, the book's path;
* ``hf``: Hugging Face ``GPT2ForSequenceClassification`` with per-batch padding;
* ``ours-bN`` (with ``--batch-sizes N``): the default path with batch size N.

    python scripts/benchmark.py --data ../shared/data/sms_spam_collection/SMSSpamCollection [--device cuda]
    python scripts/benchmark.py --device cpu --size tiny --epochs 1     # a quick check that it runs
    python scripts/benchmark.py --startup --model smollm2-135m --device cuda   # where start-up goes

It prints whole-run seconds (the epochs + the final train/val/test evaluation; downloads
excluded), training examples/s over the whole training phase (trunk-cache build
included) and in the steady state (the fastest epoch after the first), predictions/s on
the test texts, accuracies, and every path's ratios to ``reference`` and ``hf``. All
paths start from one GPT-2 checkpoint written with ``transformers`` (random weights
unless ``--weights DIR`` names a real one), so accuracy can be compared too.
This is a benchmark, not a test: about half an hour on a 2-core CPU at gpt2-small size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptclf.data.batching import collate, shuffled_batches  # noqa: E402
from gptclf.data.splits import load_splits  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402
from gptclf.tokenizers.gpt2 import GPT2Tokenizer  # noqa: E402
from gptclf.config import TrainConfig  # noqa: E402
from gptclf.training.recipe import run_training  # noqa: E402


def write_weights(directory: Path, size: str) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    dims = {"tiny": (64, 2, 4), "gpt2-small": (768, 12, 12), "gpt2-medium": (1024, 24, 16)}[size]
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=dims[0], n_layer=dims[1], n_head=dims[2])).save_pretrained(directory)
    return directory


def time_predictions(predict, texts: list[str], repeats: int = 1) -> float:
    predict(texts)  # warm-up: every batch shape seen (kernel choices; CUDA graphs captured)
    t = time.perf_counter()
    for _ in range(repeats):
        predict(texts)
    return repeats * len(texts) / (time.perf_counter() - t)


def run_ours(weights: Path, args: argparse.Namespace, out: Path, test_texts, test_labels, reference: bool = False,
             static_shapes: str = "auto", batch_size: int = 8) -> dict:
    t0 = time.perf_counter()
    run = run_training(TrainConfig(model=str(weights), data=args.data, epochs=args.epochs, device=args.device,
                                   reference=reference, out=str(out), progress=False, static_shapes=static_shapes,
                                   batch_size=batch_size),
                       log=lambda s: print("   ", s, flush=True))
    whole = time.perf_counter() - t0
    m = json.loads((run / "metrics.json").read_text())
    epochs = json.loads((run / "history.json").read_text())["epochs"]
    res = {"whole_seconds": whole, "train_accuracy": m["train_accuracy"], "val_accuracy": m["val_accuracy"],
           "test_accuracy": m["test_accuracy"],
           # Training throughput counts the trunk-cache build as training time.
           "train_examples_per_second": m["train_examples_per_second"] * m["train_seconds"]
           / (m["train_seconds"] + m["cache_seconds"]),
           "steady_examples_per_second": max(e["examples_per_second"] for e in epochs[1:] or epochs)}
    clf = Classifier.load(run, device=args.device, static_shapes="off" if reference else static_shapes)
    res["predictions_per_second"] = time_predictions(clf.predict_proba, test_texts, args.predict_repeats)
    res["_probs"] = clf.predict_proba(test_texts)  # compared between paths, not printed
    if not reference and static_shapes == "auto" and batch_size == 8 and args.device in ("cpu", "auto") \
            and not torch.cuda.is_available():
        q = Classifier.load(run, device="cpu", quantize="int8")
        res["int8_predictions_per_second"] = time_predictions(q.predict_proba, test_texts)
        res["int8_test_accuracy"] = q.evaluate(test_texts, test_labels)["accuracy"]
    return res


def run_hf(weights: Path, args: argparse.Namespace) -> dict:
    """Hugging Face GPT2ForSequenceClassification, the same recipe, padded per batch."""
    from transformers import GPT2ForSequenceClassification

    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    t0 = time.perf_counter()
    splits = load_splits(args.data)
    tok = GPT2Tokenizer()
    lab = {x: i for i, x in enumerate(splits.labels)}

    def enc(exs):
        ids = [t[:120] for t in tok.encode_batch([e.text for e in exs])]
        return ids, torch.tensor([lab[e.label] for e in exs])

    (tr_ids, tr_y), (va_ids, va_y), (te_ids, te_y) = enc(splits.train), enc(splits.val), enc(splits.test)
    torch.manual_seed(123)
    model = GPT2ForSequenceClassification.from_pretrained(weights, num_labels=2, pad_token_id=50256).to(device)
    for p in model.parameters():
        p.requires_grad = False
    for mod in (model.transformer.h[-1], model.transformer.ln_f, model.score):
        for p in mod.parameters():
            p.requires_grad = True
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.1)

    def logits(ids_list, idx):
        ids, lengths = collate([ids_list[i] for i in idx], 50256)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits

    @torch.inference_mode()
    def loss_acc(ids_list, y, batches):
        model.eval()
        loss = correct = n = 0
        for idx in batches:
            lg = logits(ids_list, idx).float()
            yy = y[idx].to(device)
            loss += float(F.cross_entropy(lg, yy, reduction="sum"))
            correct += int((lg.argmax(-1) == yy).sum())
            n += len(idx)
        model.train()
        return loss / n, correct / n

    gen, egen = torch.Generator().manual_seed(123), torch.Generator().manual_seed(124)
    val_b = [list(range(i, min(i + 8, len(va_ids)))) for i in range(0, len(va_ids), 8)]
    step, seen, t_train = -1, 0, time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        for idx in shuffled_batches(len(tr_ids), 8, gen):
            opt.zero_grad()
            F.cross_entropy(logits(tr_ids, idx), tr_y[idx].to(device)).backward()
            opt.step()
            step += 1
            seen += len(idx)
            if step % 50 == 0:
                tl, _ = loss_acc(tr_ids, tr_y, shuffled_batches(len(tr_ids), 8, egen)[:5])
                vl, _ = loss_acc(va_ids, va_y, val_b[:5])
                print(f"    hf ep {epoch + 1} step {step}: train loss {tl:.3f} val loss {vl:.3f}", flush=True)
        loss_acc(tr_ids, tr_y, shuffled_batches(len(tr_ids), 8, egen)[:5])
        loss_acc(va_ids, va_y, val_b[:5])
    train_rate = seen / (time.perf_counter() - t_train)
    full = lambda n: [list(range(i, min(i + 8, n))) for i in range(0, n, 8)]  # noqa: E731
    accs = {name: loss_acc(i, y, full(len(i)))[1] for name, i, y in
            (("train", tr_ids, tr_y), ("val", va_ids, va_y), ("test", te_ids, te_y))}
    whole = time.perf_counter() - t0

    @torch.inference_mode()
    def predict(texts):
        model.eval()
        ids = tok.encode_batch(texts)
        out = []
        for i in range(0, len(ids), 8):
            out.append(torch.softmax(logits(ids, list(range(i, min(i + 8, len(ids))))).float(), -1).cpu())
        return torch.cat(out)

    return {"whole_seconds": whole, "train_examples_per_second": train_rate,
            "train_accuracy": accs["train"], "val_accuracy": accs["val"], "test_accuracy": accs["test"],
            "predictions_per_second": time_predictions(predict, [e.text for e in splits.test], args.predict_repeats)}


def run_path(name: str, weights: Path, args: argparse.Namespace, tmp: Path, test_texts, test_labels) -> dict:
    if name == "hf":
        return run_hf(weights, args)
    if name.startswith("ours-b"):
        return run_ours(weights, args, tmp / name, test_texts, test_labels, batch_size=int(name[6:]))
    kinds = {"ours": {}, "eager": {"static_shapes": "off"}, "reference": {"reference": True}}
    if name not in kinds:
        raise SystemExit(f"unknown path {name!r}: use ours, eager, reference, hf (or ours-bN)")
    return run_ours(weights, args, tmp / name, test_texts, test_labels, **kinds[name])


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def print_table(results: dict[str, dict]) -> None:
    print(f"{'path':<12}{'whole s':>10}{'train ex/s':>12}{'steady ex/s':>13}{'pred/s':>10}{'train %':>9}"
          f"{'val %':>8}{'test %':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['whole_seconds']:>10.1f}{r['train_examples_per_second']:>12.1f}"
              f"{r.get('steady_examples_per_second', float('nan')):>13.1f}"
              f"{r['predictions_per_second']:>10.1f}{r['train_accuracy'] * 100:>9.2f}"
              f"{r['val_accuracy'] * 100:>8.2f}{r['test_accuracy'] * 100:>8.2f}")
    if "ours" in results and "int8_predictions_per_second" in results["ours"]:
        o = results["ours"]
        print(f"{'ours int8':<12}{'':>10}{'':>12}{'':>13}{o['int8_predictions_per_second']:>10.1f}{'':>9}{'':>8}"
              f"{o['int8_test_accuracy'] * 100:>8.2f}")
    if "ours" in results and "eager" in results:
        a, b = results["ours"]["_probs"], results["eager"]["_probs"]
        print(f"\nours (static shapes) vs eager, test predictions: {(a.argmax(1) == b.argmax(1)).sum()} of {len(a)} "
              f"labels agree, largest probability difference {abs(a - b).max():.2e}; test accuracy "
              f"{results['ours']['test_accuracy'] * 100:.2f} vs {results['eager']['test_accuracy'] * 100:.2f} %")
    print()
    for name, o in results.items():
        for peer in ("reference", "hf"):
            if peer in results and peer != name and name not in ("reference", "hf"):
                r = results[peer]
                print(f"{name} vs {peer}: whole run {r['whole_seconds'] / o['whole_seconds']:.2f}x faster, "
                      f"training {o['train_examples_per_second'] / r['train_examples_per_second']:.2f}x, "
                      f"predictions {o['predictions_per_second'] / r['predictions_per_second']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="sms-spam")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", default="gpt2-small", choices=["tiny", "gpt2-small", "gpt2-medium"])
    p.add_argument("--weights", default=None, help="a Hugging Face GPT-2 directory (default: random, written here)")
    p.add_argument("--paths", default="ours,eager,reference,hf",
                   help="which of ours,eager,reference,hf to run (ours-bN: the default path at batch size N)")
    p.add_argument("--batch-sizes", default="", help="also run ours at these batch sizes, e.g. 16,32")
    p.add_argument("--predict-repeats", type=int, default=1, help="passes over the test texts when timing predictions")
    p.add_argument("--startup", action="store_true", help="only time the start-up phases (see startup_phases)")
    p.add_argument("--model", default="gpt2-small", help="--startup: the backbone")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.startup:
        return startup(args)
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="gptclf-bench-"))
    weights = Path(args.weights) if args.weights else write_weights(tmp / "weights", args.size)
    splits = load_splits(args.data)
    test_texts, test_labels = [e.text for e in splits.test], [e.label for e in splits.test]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "no GPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} ({gpu}), "
          f"{args.size}, {args.epochs} epochs", flush=True)
    results: dict[str, dict] = {}
    paths = args.paths.split(",") + [f"ours-b{b}" for b in args.batch_sizes.split(",") if b]
    for path in paths:
        print(f"== {path}", flush=True)
        results[path] = run_path(path, weights, args, tmp, test_texts, test_labels)
        print("   ", json.dumps(public(results[path])), flush=True)
    print()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": gpu, "results": {k: public(r) for k, r in results.items()}},
                                              indent=2))


# ----------------------------------------------------------------------------- start-up


STARTUP_CHILD = r"""
import json, sys, time, tempfile
t = {}
t0 = time.perf_counter()
import torch
t["import torch"] = time.perf_counter() - t0; t0 = time.perf_counter()
from gptclf.config import TrainConfig
from gptclf.device import pick_device, resolve_precision
from gptclf.loading import load_backbone
from gptclf.training import recipe
from gptclf.training.static_step import training_shapes
from gptclf.training.trunk_cache import build_feeds
t["import gptclf"] = time.perf_counter() - t0; t0 = time.perf_counter()
model, data, device = sys.argv[1:4]
dev = pick_device(device)
torch.ones(1, device=dev).sum().item()
t["device init (CUDA context)"] = time.perf_counter() - t0; t0 = time.perf_counter()
cfg = TrainConfig(model=model, data=data, device=device, epochs=1, progress=False,
                  out=tempfile.mkdtemp() + "/r").resolved()
precision = resolve_precision(cfg.precision, dev)
backbone = load_backbone(cfg.model, cfg.init)
t["backbone: weights (GGUF: dequantized), tokenizer"] = time.perf_counter() - t0; t0 = time.perf_counter()
splits = recipe.prepare_data(cfg)
enc = recipe.encode_splits(cfg, splits, backbone)
cfg = cfg.for_backbone(backbone.model.config.arch)
t["data: read, split, tokenize"] = time.perf_counter() - t0; t0 = time.perf_counter()
clf, frozen = recipe.setup_classifier(cfg, backbone, len(splits.labels), dev)
torch.ones(1, device=dev).sum().item()
t["classifier to the device"] = time.perf_counter() - t0; t0 = time.perf_counter()
log = lambda s: None
pad_to = enc.max_length if cfg.padding == "longest" else None
shapes = training_shapes(cfg, clf, dev, precision, enc.max_length, 1, log)
feeds = build_feeds(cfg, clf, frozen, enc.datasets, backbone.tokenizer.pad_id, pad_to, dev, precision, log, shapes)
torch.ones(1, device=dev).sum().item()
t["trunk cache"] = time.perf_counter() - t0; t0 = time.perf_counter()
trainer, _ = recipe.make_trainer(cfg, clf, feeds, enc, dev, precision, log, shapes=shapes)
clf.train()
batch = list(range(cfg.batch_size))
trainer._step([batch])
t["first step (graph capture included)"] = time.perf_counter() - t0; t0 = time.perf_counter()
trainer._step([batch])
t["second step"] = time.perf_counter() - t0
print("STARTUP " + json.dumps(t))
"""


def startup(args: argparse.Namespace) -> None:
    """Where the seconds before the first training step go, each phase timed in a fresh process."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")
           + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", STARTUP_CHILD, args.model, args.data, args.device],
                       capture_output=True, text=True, env=env)
    line = [x for x in r.stdout.splitlines() if x.startswith("STARTUP ")]
    if r.returncode or not line:
        raise SystemExit(r.stderr[-3000:])
    phases = json.loads(line[0][8:])
    print(f"start-up of gptclf train --model {args.model} --device {args.device}:")
    for name, sec in phases.items():
        print(f"  {name:<40}{sec:>8.2f} s")
    print(f"  {'total':<40}{sum(phases.values()):>8.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": args.device, "phases": phases}, indent=2))


if __name__ == "__main__":
    main()
