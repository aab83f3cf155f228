#!/usr/bin/env python
"""Side-by-side speed benchmark: our default path, our --reference path (the book's), and
Hugging Face ``GPT2ForSequenceClassification`` with per-batch padding, on the same data
and the same initial weights, in one process.

    python scripts/benchmark.py --data ../shared/data/sms_spam_collection/SMSSpamCollection

It prints training examples/s, predictions/s, whole-run seconds (5 epochs + the final
train/val/test evaluation; downloads excluded) and the ratios. All three start from one
GPT-2 124M-shape checkpoint written with ``transformers`` (random weights unless
``--weights DIR`` names a real one), so accuracy can be compared too.
This is a benchmark, not a test: it takes about half an hour on a 2-core CPU.
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

    dims = {"gpt2-small": (768, 12, 12), "gpt2-medium": (1024, 24, 16)}[size]
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=dims[0], n_layer=dims[1], n_head=dims[2])).save_pretrained(directory)
    return directory


def time_predictions(predict, texts: list[str], repeats: int = 1) -> float:
    predict(texts[:16])  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        predict(texts)
    return repeats * len(texts) / (time.perf_counter() - t)


def run_ours(weights: Path, args: argparse.Namespace, reference: bool, out: Path, test_texts, test_labels) -> dict:
    t0 = time.perf_counter()
    run = run_training(TrainConfig(model=str(weights), data=args.data, epochs=args.epochs, device=args.device,
                                   reference=reference, out=str(out), progress=False),
                       log=lambda s: print("   ", s, flush=True))
    whole = time.perf_counter() - t0
    m = json.loads((run / "metrics.json").read_text())
    res = {"whole_seconds": whole, "train_accuracy": m["train_accuracy"], "val_accuracy": m["val_accuracy"],
           "test_accuracy": m["test_accuracy"],
           # Training throughput counts the trunk-cache build as training time.
           "train_examples_per_second": m["train_examples_per_second"] * m["train_seconds"]
           / (m["train_seconds"] + m["cache_seconds"])}
    clf = Classifier.load(run, device=args.device)
    res["predictions_per_second"] = time_predictions(clf.predict_proba, test_texts)
    if not reference and args.device in ("cpu", "auto") and not torch.cuda.is_available():
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
            "predictions_per_second": time_predictions(predict, [e.text for e in splits.test])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="sms-spam")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", default="gpt2-small", choices=["gpt2-small", "gpt2-medium"])
    p.add_argument("--weights", default=None, help="a Hugging Face GPT-2 directory (default: random, written here)")
    p.add_argument("--paths", default="ours,reference,hf", help="which of ours,reference,hf to run")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="gptclf-bench-"))
    weights = Path(args.weights) if args.weights else write_weights(tmp / "weights", args.size)
    splits = load_splits(args.data)
    test_texts, test_labels = [e.text for e in splits.test], [e.label for e in splits.test]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.size}, {args.epochs} epochs", flush=True)
    results: dict[str, dict] = {}
    for path in args.paths.split(","):
        print(f"== {path}", flush=True)
        if path == "hf":
            results[path] = run_hf(weights, args)
        else:
            results[path] = run_ours(weights, args, path == "reference", tmp / path, test_texts, test_labels)
        print("   ", json.dumps(results[path]), flush=True)
    print()
    print(f"{'path':<12}{'whole s':>10}{'train ex/s':>12}{'pred/s':>10}{'train %':>9}{'val %':>8}{'test %':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['whole_seconds']:>10.1f}{r['train_examples_per_second']:>12.1f}"
              f"{r['predictions_per_second']:>10.1f}{r['train_accuracy'] * 100:>9.2f}"
              f"{r['val_accuracy'] * 100:>8.2f}{r['test_accuracy'] * 100:>8.2f}")
    if "ours" in results and "int8_predictions_per_second" in results["ours"]:
        o = results["ours"]
        print(f"{'ours int8':<12}{'':>10}{'':>12}{o['int8_predictions_per_second']:>10.1f}{'':>9}{'':>8}"
              f"{o['int8_test_accuracy'] * 100:>8.2f}")
    o = results.get("ours")
    if o:
        print()
        for peer in ("reference", "hf"):
            if peer in results:
                r = results[peer]
                print(f"ours vs {peer}: whole run {r['whole_seconds'] / o['whole_seconds']:.1f}x faster, "
                      f"training {o['train_examples_per_second'] / r['train_examples_per_second']:.1f}x, "
                      f"predictions {o['predictions_per_second'] / r['predictions_per_second']:.1f}x"
                      + (f" (int8 {o['int8_predictions_per_second'] / r['predictions_per_second']:.1f}x)"
                         if "int8_predictions_per_second" in o else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
