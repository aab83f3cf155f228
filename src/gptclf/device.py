"""Device and precision choices shared by training and inference."""

from __future__ import annotations

import contextlib

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


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
