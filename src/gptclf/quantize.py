"""int8 inference on CPU: dynamic quantization of the transformer's linear layers.

Chosen by measurement (see the README's speed section): PyTorch's dynamic int8
quantization needs no extra dependency and, on this 2-core CPU, runs a 768x3072 linear
about 6x faster than fp32; ONNX Runtime would add a large dependency for a similar gain.
Embeddings, norms and the class head stay in fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import GptclfError


def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    if mode != "int8":
        raise GptclfError(f"unknown quantization {mode!r}", hint="use int8")
    backbone = getattr(model, "backbone", model)
    with warnings.catch_warnings():
        # PyTorch marks its quantized tensor API as deprecated (moving to torchao); it still works.
        warnings.simplefilter("ignore")
        backbone.trf_blocks = torch.ao.quantization.quantize_dynamic(
            backbone.trf_blocks, {nn.Linear}, dtype=torch.qint8)
    return model
