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

Everything after ``--`` is a ``gptclf train`` option. Recipes that freeze nothing
(``--trainable all``, LoRA on every block) train without the cache; ``--reference`` (the
book's own loop) is refused.

A sweep compares many recipes on one model load: ``--recipes FILE`` holds one recipe per
line (options added to those after ``--``); each recipe's summary goes to ``--jsonl`` as
soon as it is done, and a table sorted by mean test accuracy ends the run:

    python scripts/seed_spread.py --seeds 1,2,3,4,5,6 --recipes recipes.txt --jsonl out.jsonl -- \\
        --model smollm2-135m --data ../shared/data/sms_spam_collection/SMSSpamCollection
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gptclf.cli import build_parser
from gptclf.cli.train import train_config
from gptclf.device import configure_backends, pick_device, resolve_precision
from gptclf.errors import GptclfError
from gptclf.loading import load_backbone
from gptclf.loading.backbone import Backbone
from gptclf.training.evaluate import predict_logits
from gptclf.training.recipe import Encoded, encode_splits, make_trainer, prepare_data, setup_classifier
from gptclf.training.trunk_cache import Feeds, build_feeds


def seeded_models(cfg, seeds: list[int], log=print, backbone: Backbone | None = None):
    """For each seed: a fresh classifier as ``gptclf train`` builds it with that seed, on one
    model load and one frozen-trunk cache. Yields ``(seed, model, feeds, enc, splits, device,
    precision)``; ``cfg`` must be resolved.

    ``backbone`` (as :func:`load_backbone` returns it) saves the load when a sweep runs many
    recipes on one model; it is never modified: every seed trains its own copy.
    """
    if cfg.reference:
        raise GptclfError("--reference runs the book's own loop; seed_spread runs gptclf's",
                          hint="loop over 'gptclf train --reference --seed S' instead")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    configure_backends(device)
    splits = prepare_data(cfg)
    if backbone is None:
        torch.manual_seed(cfg.seed)  # as gptclf train does before loading: --init random weights match
        backbone = load_backbone(cfg.model, cfg.init)
    enc = encode_splits(cfg, splits, backbone)
    cfg = cfg.for_backbone(backbone.model.config.arch)
    feeds: Feeds | None = None
    try:
        for seed in seeds:
            # A fresh copy per seed (full fine-tuning and LoRA change the blocks themselves), built
            # as gptclf train builds it, seeded with this seed.
            model, frozen = setup_classifier(replace(cfg, seed=seed), backbone, len(splits.labels), device,
                                             fresh_copy=True)
            if feeds is None:  # the frozen blocks are the same for every seed: cache them once
                feeds = build_feeds(cfg, model, frozen, enc.datasets, backbone.tokenizer.pad_id,
                                    enc.max_length if cfg.padding == "longest" else None, device, precision, log)
            yield seed, model, feeds, enc, splits, device, precision
            del model
    finally:
        if feeds is not None:
            feeds.close()


def spread(cfg, seeds: list[int], log=print, backbone: Backbone | None = None) -> dict:
    """Train ``cfg`` once per seed in ``seeds``; per-seed accuracies and test mistakes
    (``backbone``: see :func:`seeded_models`)."""
    cfg = cfg.resolved()
    runs, splits = [], None
    for seed, model, feeds, enc, splits, device, precision in seeded_models(cfg, seeds, log, backbone):
        t0 = time.perf_counter()
        result = _train_one(cfg, seed, model, feeds, enc, device, precision)
        result["seconds"] = time.perf_counter() - t0
        runs.append(result)
        log(f"seed {seed:>6}: train {result['train_accuracy'] * 100:6.2f}  val "
            f"{result['val_accuracy'] * 100:6.2f}  test {result['test_accuracy'] * 100:6.2f} "
            f"({len(result['test_wrong'])} wrong)  {result['seconds']:.0f}s")
    return _summary(cfg, runs, splits)


def _train_one(cfg, seed: int, model, feeds: Feeds, enc: Encoded, device, precision: str) -> dict:
    """gptclf train's loop with ``seed`` (head and batch order), best epoch kept if asked."""
    run_cfg = replace(cfg, seed=seed, progress=False)
    trainer, stopper = make_trainer(run_cfg, model, feeds, enc, device, precision, lambda s: None)
    trainer.fit()
    if stopper is not None and stopper.best_epoch is not None:
        stopper.restore_best(model)
    result: dict = {"seed": seed}
    for name, ds in enc.datasets.items():
        logits = predict_logits(model, feeds[name], len(ds), cfg.eval_batch_size, ds.lengths, device, precision)
        y = ds.labels.numpy()
        result[f"{name}_accuracy"] = float((logits.argmax(1) == y).mean())
        if name == "test":
            result["test_wrong"] = [int(i) for i in (logits.argmax(1) != y).nonzero()[0]]
    return result


def _summary(cfg, runs: list[dict], splits) -> dict:
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


def read_recipes(path: Path) -> list[list[str]]:
    """One recipe per line (``gptclf train`` options); blank lines and ``#`` comments skipped."""
    recipes = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            recipes.append(shlex.split(line))
    return recipes


def sweep(base: list[str], recipes: list[list[str]], seeds: list[int], log=print,
          budget_s: float | None = None, jsonl: Path | None = None) -> list[dict]:
    """:func:`spread` for each recipe (``base`` + its options), one backbone load for all.

    Each summary is appended to ``jsonl`` as soon as it is done, so a sweep stopped part way
    keeps what it finished; ``budget_s`` starts no new recipe once that many seconds passed.
    """
    cfgs = [train_config(build_parser().parse_args(["train", *base, *r])) for r in recipes]
    models = {(c.model, c.init) for c in cfgs}
    if len(models) != 1:
        raise GptclfError(f"a sweep trains one model; these recipes name {len(models)}: {sorted(models)}",
                          hint="put --model in the base options and run one sweep per model")
    t_start = time.perf_counter()
    torch.manual_seed(cfgs[0].seed)
    backbone = load_backbone(cfgs[0].model, cfgs[0].init)
    log(f"loaded {cfgs[0].model} in {time.perf_counter() - t_start:.1f}s")
    summaries = []
    for options, cfg in zip(recipes, cfgs):
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            log(f"budget of {budget_s:.0f}s spent: skipping the remaining {len(cfgs) - len(summaries)} recipe(s)")
            break
        name = " ".join(options) or "(base options)"
        log(f"--- {name}")
        try:
            summary = spread(cfg, seeds, log=log, backbone=backbone)
        except (GptclfError, RuntimeError) as e:  # one bad recipe (e.g. out of memory) must not end the sweep
            log(f"    failed: {e}")
            summary = {"error": str(e)}
        summary["recipe"] = name
        summaries.append(summary)
        if "error" not in summary:
            log(f"    test {summary['test']['mean'] * 100:.2f} ± {summary['test']['stdev'] * 100:.2f}  "
                f"val {summary['val']['mean'] * 100:.2f}  train {summary['train']['mean'] * 100:.2f}")
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(json.dumps(summary, default=str) + "\n")
    return summaries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s [--seeds S,S,...] [--json FILE] -- GPTCLF-TRAIN-OPTIONS")
    ap.add_argument("--seeds", default="123,1,2,3,4,5", help="training seeds, comma-separated")
    ap.add_argument("--json", type=Path, help="also write every seed's result here")
    ap.add_argument("--recipes", type=Path, metavar="FILE",
                    help="sweep: one recipe (gptclf train options, added to those after --) per line")
    ap.add_argument("--jsonl", type=Path, help="sweep: append each recipe's summary to this file")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="sweep: start no new recipe after this many seconds")
    ap.add_argument("train_options", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    options = a.train_options[1:] if a.train_options[:1] == ["--"] else a.train_options
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {a.seeds!r}: give whole numbers separated by commas")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    if a.recipes:
        try:
            done = sweep(options, read_recipes(a.recipes), seeds, budget_s=a.budget_s, jsonl=a.jsonl)
        except GptclfError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{'test mean':>9} {'stdev':>5} {'min':>6} {'val':>6} {'train':>6}  recipe")
        for r in sorted((r for r in done if "error" not in r), key=lambda r: -r["test"]["mean"]):
            print(f"{r['test']['mean'] * 100:9.2f} {r['test']['stdev'] * 100:5.2f} {r['test']['min'] * 100:6.2f} "
                  f"{r['val']['mean'] * 100:6.2f} {r['train']['mean'] * 100:6.2f}  {r['recipe']}")
        return 0
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
