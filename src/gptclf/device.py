"""Where the work runs: device and precision choices, and how much memory there is."""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import GptclfError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GptclfError(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GptclfError("--device cuda: no CUDA GPU is available", hint="use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise GptclfError("--device mps: MPS is not available", hint="use --device auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 autocast on GPUs that support it, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16"):
        raise GptclfError(f"--precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    return precision


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        # TF32 matmuls: ~free speed for the fp32 parts (optimizer maths, norms).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def pad_multiple(device: torch.device) -> int:
    """Round each dynamically padded batch up to a multiple of this many tokens.

    On a GPU every new sequence length is a new set of kernel shapes, and the first batch
    of each shape pays for kernel selection: with ~100 distinct lengths the first epoch
    of the chapter-6 job ran at a tenth of its later speed. Multiples of 16 leave ~8
    shapes for the same data. The CPU has no such cost, and padding is pure waste there.
    Results do not depend on it: padding is masked and pooling reads real tokens only.
    ``GPTCLF_PAD_MULTIPLE`` overrides it (1 turns it off), for measuring.
    """
    env = os.environ.get("GPTCLF_PAD_MULTIPLE")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise GptclfError(f"GPTCLF_PAD_MULTIPLE={env!r}: give a whole number of tokens (1: off)") from None
        if value < 1:
            raise GptclfError(f"GPTCLF_PAD_MULTIPLE={env!r} must be at least 1")
        return value
    return 16 if device.type == "cuda" else 1


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast for ``precision == 'bf16'``; ``cache=False`` for a CUDA graph capture
    (gptclf.graphs), which must record the weights' casts rather than reuse cached ones."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def available_ram() -> int:
    """Bytes of RAM the kernel says a new allocation can get (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
