"""How much of a recipe's accuracy is the recipe, and how much the training seed?

Trains one ``gptclf train`` recipe once per training seed on one fixed data split and
prints each seed's train / val / test accuracy, the mean and spread, and the test texts
that most seeds get wrong. A single run on a 300-text test set moves by a text or two
(0.33 points each) with the seed alone; comparing recipes by one run each compares noise.

The split stays the one ``--seed`` (the train option, default 123) picks; ``--seeds``
changes only what the seed does in training: the new head's initialisation and the
batch order. The seed equal to ``--seed`` reproduces ``gptclf train``'s run exactly (a
test checks it). The model is loaded and the frozen blocks' output cached once for all
seeds, so N seeds cost one load, one cache and N short trainings.

    python scripts/seed_spread.py --seeds 123,1,2,3,4,5 -- \\
        --model smollm2-135m --data ../shared/data/sms_spam_collection/SMSSpamCollection

Everything after ``--`` is a ``gptclf train`` option. Recipes the cache cannot serve
(``--trainable all`` or ``lora``, ``--reference``, ``--cache off``) are refused: loop over
``gptclf train --seed S`` for those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gptclf.classifier import freeze_for_finetuning, replace_head
from gptclf.cli import build_parser, train_config
from gptclf.data import encode_examples, load_splits
from gptclf.device import configure_backends, pick_device, resolve_precision
from gptclf.errors import GptclfError
from gptclf.train import (CachedFeeder, TrunkCache, _cache_mode, build_classifier, make_optimizer,
                          predict_probabilities, train_classifier)
from gptclf.weights import load_backbone


def spread(cfg, seeds: list[int], log=print) -> dict:
    """Train ``cfg`` once per seed in ``seeds``; per-seed accuracies and test mistakes."""
    cfg = cfg.resolved()
    if cfg.trainable == "lora" or cfg.reference or cfg.cache == "off":
        raise GptclfError("this recipe cannot share one trunk cache between seeds",
                          hint="loop over 'gptclf train --seed S' instead")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    splits = load_splits(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                         label_column=cfg.label_column, balance=cfg.balance, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # as gptclf train does before loading: --init random weights match
    backbone = load_backbone(cfg.model, cfg.init)
    tok = backbone.tokenizer
    ctx_len = backbone.model.config.context_length
    index = {lab: i for i, lab in enumerate(splits.labels)}
    sets = {}
    max_length = cfg.max_length
    for name, examples in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        sets[name] = encode_examples(tok, [e.text for e in examples], [index[e.label] for e in examples],
                                     max_length, ctx_len, name, cfg.template)
        max_length = sets["train"].max_length  # val and test use the training length, as train does
    model, frozen = build_classifier(backbone, len(splits.labels), cfg.trainable, cfg.pooling, seeds[0],
                                     causal=cfg.causal_mask)
    if frozen == 0:
        raise GptclfError(f"--trainable {cfg.trainable} freezes no block, so there is nothing to cache",
                          hint="loop over 'gptclf train --seed S' instead")
    model.to(device)
    pad_to = max_length if cfg.padding == "longest" else None
    mode = _cache_mode(cfg, model, frozen, list(sets.values()), pad_to, device, lambda s: None)
    if mode == "off":
        raise GptclfError("the frozen blocks' output is not fixed (dropout?), so it cannot be cached")
    t0 = time.perf_counter()
    caches = {name: TrunkCache.build(model, ds, frozen, tok.pad_id, pad_to, device, precision,
                                     cfg.eval_batch_size, name, mode="ram" if mode == "ram" else
                                     ("disk" if mode == "disk" else "cpu"), progress=cfg.progress)
              for name, ds in sets.items()}
    log(f"{cfg.model}: {len(splits.train)} / {len(splits.val)} / {len(splits.test)} texts, "
        f"{frozen} frozen blocks cached in {time.perf_counter() - t0:.1f}s")
    feeds = {name: CachedFeeder(c, frozen, device) for name, c in caches.items()}
    # The trainable blocks as loaded: every seed starts from them, as a new run would.
    start = {n: p.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and not n.startswith("backbone.out_head.")}
    runs = []
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in start:
                        p.copy_(start[n])
            # build_classifier's order: seed, then the new head (so seed S matches a run with --seed S).
            torch.manual_seed(seed)
            replace_head(model.backbone, len(splits.labels))
            freeze_for_finetuning(model.backbone, cfg.trainable)
            model.to(device)
            run_cfg = replace(cfg, seed=seed, progress=False)
            stopper = run_cfg.stopper()
            train_classifier(model, make_optimizer(model, run_cfg, device), feeds["train"], feeds["val"],
                             sets["train"], sets["val"], run_cfg, device, precision, lambda s: None,
                             stopper=stopper)
            if stopper is not None and stopper.best_epoch is not None:
                stopper.restore_best(model)
            result = {"seed": seed}
            for name, ds in sets.items():
                probs = predict_probabilities(model, feeds[name], len(ds), cfg.eval_batch_size, ds.lengths,
                                              device, precision)
                y = ds.labels.numpy()
                result[f"{name}_accuracy"] = float((probs.argmax(1) == y).mean())
                if name == "test":
                    result["test_wrong"] = [int(i) for i in (probs.argmax(1) != y).nonzero()[0]]
            result["seconds"] = time.perf_counter() - t0
            runs.append(result)
            log(f"seed {seed:>6}: train {result['train_accuracy'] * 100:6.2f}  val "
                f"{result['val_accuracy'] * 100:6.2f}  test {result['test_accuracy'] * 100:6.2f} "
                f"({len(result['test_wrong'])} wrong)  {result['seconds']:.0f}s")
    finally:
        for c in caches.values():
            c.close()
    summary = {"config": asdict(cfg), "runs": runs}
    for name in ("train", "val", "test"):
        values = [r[f"{name}_accuracy"] for r in runs]
        summary[name] = {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "min": min(values), "max": max(values)}
    counts: dict[int, int] = {}
    for r in runs:
        for i in r["test_wrong"]:
            counts[i] = counts.get(i, 0) + 1
    summary["test_wrong_counts"] = [{"index": i, "seeds": k, "label": splits.test[i].label,
                                     "text": splits.test[i].text}
                                    for i, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s [--seeds S,S,...] [--json FILE] -- GPTCLF-TRAIN-OPTIONS")
    ap.add_argument("--seeds", default="123,1,2,3,4,5", help="training seeds, comma-separated")
    ap.add_argument("--json", type=Path, help="also write every seed's result here")
    ap.add_argument("train_options", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    options = a.train_options[1:] if a.train_options[:1] == ["--"] else a.train_options
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {a.seeds!r}: give whole numbers separated by commas")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    cfg = train_config(build_parser().parse_args(["train", *options]))
    try:
        summary = spread(cfg, seeds)
    except GptclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(seeds)
    for name in ("train", "val", "test"):
        s = summary[name]
        print(f"{name:>5}: mean {s['mean'] * 100:.2f} %, stdev {s['stdev'] * 100:.2f}, "
              f"range {s['min'] * 100:.2f} - {s['max'] * 100:.2f} over {n} seed(s)")
    print("test texts most often wrong (seeds of %d):" % n)
    for w in summary["test_wrong_counts"][:10]:
        text = w["text"].replace("\n", " ")
        print(f"  {w['seeds']:>2}  [{w['label']}] {text[:90]}{'...' if len(text) > 90 else ''}")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
