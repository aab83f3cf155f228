#!/usr/bin/env python
"""Training throughput of the classifier with every parameter trainable, in tokens/s and MFU.

    python scripts/throughput.py --model gpt2-small --batch-size 32 --seq-len 256 --steps 30
    python scripts/throughput.py --model gpt2-medium --grad-checkpointing

It times the same step ``gptclf train --trainable all`` runs (our model, head swap,
last-real-token pooling, cross-entropy, fused AdamW on CUDA, bf16 autocast where the
GPU has it, optional ``--compile``) on random token batches of a fixed length, so the
number measures the model code rather than the data. Random weights: throughput does
not depend on them. MFU = 6 * parameters * tokens/s (+ attention FLOPs) / peak FLOPs;
pass ``--peak-tflops`` for your card (989 for an H100 SXM in dense bf16).
This is a benchmark script, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptclf.device import autocast, configure_backends, pick_device, resolve_precision  # noqa: E402
from gptclf.models import registry as models  # noqa: E402
from gptclf.models.classifier import SequenceClassifier, freeze_for_finetuning, replace_head  # noqa: E402


def preset(name: str):
    found = models.find_preset(name)
    if found is None:
        raise SystemExit(f"unknown preset {name!r}; known: {', '.join(models.model_names())}")
    return found[2].config


def flops_per_token(n_params: int, n_layers: int, dim: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token (PaLM appendix B): 6N plus the attention scores."""
    return 6 * n_params + 12 * n_layers * dim * seq_len


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-small", help="a preset: gpt2-small/medium/large/xl, smollm2-135m, ...")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak dense TFLOP/s for MFU (default: 989 on an H100 or H200, else none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cfg = preset(args.model)
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    configure_backends(device)
    torch.manual_seed(0)
    backbone = models.build_model(cfg)
    replace_head(backbone, 2)
    freeze_for_finetuning(backbone, "all")
    model = SequenceClassifier(backbone, "last-nonpad", grad_checkpointing=args.grad_checkpointing).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1,
                            **({"fused": True} if device.type == "cuda" else {}))
    step_model = torch.compile(model) if args.compile else model
    vocab = cfg.vocab_size
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), device=device)
    lengths = torch.full((args.batch_size,), args.seq_len, device=device)
    y = torch.randint(0, 2, (args.batch_size,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = step_model(ids, lengths)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - t
    tokens_s = args.steps * args.batch_size * args.seq_len / seconds
    peak = args.peak_tflops
    if peak is None and device.type == "cuda" and any(
            h in torch.cuda.get_device_name(device) for h in ("H100", "H200")):
        peak = 989.0  # dense bf16: the H200 has the H100's compute, with more and faster memory
    fpt = flops_per_token(n_params, cfg.n_layers, cfg.emb_dim, args.seq_len)
    result = {
        "model": args.model, "parameters": n_params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision, "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
        "seconds": seconds, "tokens_per_second": tokens_s,
        "examples_per_second": args.steps * args.batch_size / seconds,
        "model_tflops": fpt * tokens_s / 1e12,
        "mfu": fpt * tokens_s / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model} ({n_params / 1e6:.0f}M params, --trainable all, {precision}"
              f"{', compiled' if args.compile else ''}) on {result['device_name']}: "
              f"{tokens_s:,.0f} tokens/s, {result['examples_per_second']:,.1f} examples/s, "
              f"{result['model_tflops']:.1f} TFLOP/s"
              + (f", MFU {result['mfu'] * 100:.1f} %" if result["mfu"] is not None else ""))


if __name__ == "__main__":
    main()
