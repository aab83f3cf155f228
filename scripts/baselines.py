"""The baselines gptclf must beat, on exactly the split ``gptclf train`` would use.

Everything after ``--`` is a ``gptclf train`` option list: the data (``--data``, ``--val``,
``--test``, columns, ``--balance``, ``--split``, ``--seed``) is read and split by gptclf's
own ``prepare_data``, so the baselines see the same train / validation / test texts as the
run they are compared with.

1. TF-IDF + logistic regression (always): word 1-2-grams and character 2-5-grams (within
   word boundaries), sublinear tf, one logistic regression; C chosen on the validation
   split (accuracy, ties to the lower log loss), trained on the training split only.
2. ``--hf``: a Hugging Face fine-tune of the same backbone (the offline SmolLM2-135M GGUF
   loaded by ``transformers``' ``AutoModelForSequenceClassification``), the last
   ``--hf-blocks`` blocks, final norm and score head trained with AdamW, best epoch on the
   validation split kept. On a CPU this is expensive, so it is *bounded*: at most
   ``--hf-max-train`` training texts (a seeded sample), ``--hf-epochs`` epochs,
   ``--hf-max-length`` tokens. Report it with those bounds.

    pip install scikit-learn        # the TF-IDF baseline; --hf needs transformers and gguf
    python scripts/baselines.py -- --model smollm2-135m \\
        --data ../shared/data/sms_spam_collection/SMSSpamCollection
    python scripts/baselines.py --hf --hf-max-train 2000 --json out.json -- --model smollm2-135m \\
        --data dev-sets/news-topics/train.jsonl --val dev-sets/news-topics/val.jsonl \\
        --test dev-sets/news-topics/test.jsonl --balance none

Prints test accuracy, expected calibration error (15 bins, as gptclf's metrics.json) and
seconds per baseline; ``--json`` writes the same as a JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import numpy as np

from gptclf.cli import build_parser
from gptclf.cli.train import train_config
from gptclf.data.splits import DataSplits
from gptclf.metrics import classification_report, expected_calibration_error
from gptclf.training.recipe import prepare_data

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def _labels(splits: DataSplits, key: str) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(splits.labels)}
    return np.array([index[e.label] for e in getattr(splits, key)])


def tfidf_lr(splits: DataSplits, log=print) -> dict[str, Any]:
    """TF-IDF (word 1-2-grams + char 2-5-grams) + logistic regression, C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import FeatureUnion

    t0 = time.perf_counter()
    texts = {k: [e.text for e in getattr(splits, k)] for k in ("train", "val", "test")}
    y = {k: _labels(splits, k) for k in ("train", "val", "test")}
    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
    ])
    x_train = features.fit_transform(texts["train"])
    x_val, x_test = features.transform(texts["val"]), features.transform(texts["test"])
    best: tuple[tuple[float, float], float, Any] | None = None
    all_labels = list(range(len(splits.labels)))
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=5000).fit(x_train, y["train"])
        p = clf.predict_proba(x_val)
        key = (float((p.argmax(1) == y["val"]).mean()), -log_loss(y["val"], p, labels=all_labels))
        log(f"  tf-idf C={c:g}: val accuracy {key[0] * 100:.2f}%, val log loss {-key[1]:.4f}")
        if best is None or key > best[0]:
            best = (key, c, clf)
    assert best is not None
    (val_acc, _), c, clf = best
    p_test = _full_proba(clf, x_test, len(splits.labels))
    return {"name": "tfidf+lr", "C": c, "val_accuracy": val_acc,
            "test_accuracy": float((p_test.argmax(1) == y["test"]).mean()),
            "test_macro_f1": classification_report(y["test"], p_test.argmax(1), splits.labels)["macro_f1"],
            "test_ece": expected_calibration_error(y["test"], p_test), "seconds": time.perf_counter() - t0}


def _full_proba(clf: Any, x: Any, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class (a class absent from train gets 0)."""
    p = np.zeros((x.shape[0], n_classes))
    p[:, clf.classes_] = clf.predict_proba(x)
    return p


def _hf_model(n_classes: int, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """transformers' classifier on the offline SmolLM2-135M GGUF, the last blocks trainable, and its AdamW."""
    import torch
    import transformers

    from gptclf.loading.packaged import packaged_file
    from gptclf.models import registry

    gguf = packaged_file(*registry.find_preset("smollm2-135m")[2].package_file)
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        gguf.parent, gguf_file=gguf.name, num_labels=n_classes, dtype=torch.float32)
    tok.pad_token = tok.pad_token or tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    tok.padding_side = "right"
    for p in model.parameters():
        p.requires_grad = False
    for mod in (*model.model.layers[-args.hf_blocks:], model.model.norm, model.score):
        for p in mod.parameters():
            p.requires_grad = True
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.hf_lr, weight_decay=0.1)
    return tok, model, opt


def hf_finetune(cfg: Any, splits: DataSplits, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """The bounded Hugging Face fine-tune of the same GGUF backbone (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tok, model, opt = _hf_model(len(splits.labels), args)
    train = list(zip([e.text for e in splits.train], _labels(splits, "train")))
    random.Random(cfg.seed).shuffle(train)
    train = train[: args.hf_max_train] if args.hf_max_train else train
    batch = 8

    def logits(texts: list[str]) -> Any:
        enc = tok(texts, padding=True, truncation=True, max_length=args.hf_max_length, return_tensors="pt")
        return model(**enc).logits

    @torch.inference_mode()
    def proba(key: str) -> np.ndarray:
        model.eval()
        texts = [e.text for e in getattr(splits, key)]
        out = [F.softmax(logits(texts[i:i + 16]).float(), -1).numpy() for i in range(0, len(texts), 16)]
        model.train()
        return np.concatenate(out)

    best_acc, best_state, best_epoch = -1.0, None, 0
    y_val = _labels(splits, "val")
    for epoch in range(1, args.hf_epochs + 1):
        random.Random(cfg.seed + epoch).shuffle(train)
        for i in range(0, len(train), batch):
            texts, ys = zip(*train[i:i + batch])
            opt.zero_grad()
            F.cross_entropy(logits(list(texts)), torch.tensor(ys)).backward()
            opt.step()
        acc = float((proba("val").argmax(1) == y_val).mean())
        log(f"  hf epoch {epoch}: val accuracy {acc * 100:.2f}% ({time.perf_counter() - t0:.0f}s)")
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "layers" in k or
                          k.startswith(("score", "model.norm"))}
    model.load_state_dict(best_state, strict=False)
    p_test, y_test = proba("test"), _labels(splits, "test")
    return {"name": "hf", "blocks": args.hf_blocks, "lr": args.hf_lr, "epochs": args.hf_epochs,
            "best_epoch": best_epoch, "n_train_used": len(train), "max_length": args.hf_max_length,
            "val_accuracy": best_acc, "test_accuracy": float((p_test.argmax(1) == y_test).mean()),
            "test_ece": expected_calibration_error(y_test, p_test), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_opts = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", action="store_true", help="also run the bounded Hugging Face fine-tune")
    ap.add_argument("--hf-max-train", type=int, default=2000, help="at most N training texts (0: all)")
    ap.add_argument("--hf-epochs", type=int, default=3)
    ap.add_argument("--hf-blocks", type=int, default=2, help="trainable last blocks")
    ap.add_argument("--hf-lr", type=float, default=1e-4)
    ap.add_argument("--hf-max-length", type=int, default=256, help="tokens per text (the rest is cut)")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(ours)
    cfg = train_config(build_parser().parse_args(["train", *train_opts])).resolved()
    splits = prepare_data(cfg)
    print(f"data: {splits.source}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test")
    results = [tfidf_lr(splits)]
    if args.hf:
        results.append(hf_finetune(cfg, splits, args))
    for r in results:
        print(f"{r['name']}: test accuracy {r['test_accuracy'] * 100:.2f}%, test ECE {r['test_ece']:.4f}, "
              f"val accuracy {r['val_accuracy'] * 100:.2f}%, {r['seconds']:.0f}s  {json.dumps(r)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"train_options": train_opts, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
