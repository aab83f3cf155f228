"""int8 inference on CPU: dynamic quantization of the transformer's linear layers.

Chosen by measurement (see the README's speed section): PyTorch's dynamic int8
quantization needs no extra dependency and, on this 2-core CPU, runs a 768x3072 linear
about 6x faster than fp32; ONNX Runtime would add a large dependency for a similar gain.

Two choices keep the accuracy of a fine-tuned model (measured on SmolLM2-135M, where
per-tensor int8 of every block cost 1.3 points of test accuracy):

* weights are quantized **per output channel**, not with one scale per matrix, so a
  few large rows do not crush the resolution of all the others;
* each architecture names the linears whose *inputs* have outlier channels
  (``int8_fp32_linears`` in its family record: the MLP's down projection, and for Llama
  also the q/k/v projection); those stay fp32, since a dynamic int8 activation scale is set by the
  largest channel and rounds the rest away.

Measured on a fine-tuned SmolLM2-135M (chapter-6 test split, 300 texts, fp32 98.33 %):
per-tensor int8 everywhere 95.33 %; per-channel 96.00 %; per-channel with the down
projection kept 97.67 %; with q/k/v and the down projection kept 98.33 % (all 300
predictions equal to fp32's, max probability change 0.12), at 1.7x fp32's speed.
On the benchmark's fine-tuned GPT-2 (86.00 % fp32): per-tensor everywhere flipped 2
predictions, per-channel everywhere 5, per-channel with the down projection kept 1
(86.33 %), at 2x fp32's speed.

Embeddings, norms and the class head stay in fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import GptclfError
from ..models import registry

MODES = ("int8",)


def quantize_model(model: nn.Module, mode: str = "int8", keep_last: int = 0,
                   per_channel: bool = True, skip: tuple[str, ...] | None = None) -> nn.Module:
    """Quantize the linear layers of every block except the last ``keep_last`` ones
    and those whose name (inside the block) ends with one of ``skip`` (default: the
    architecture's ``int8_fp32_linears``)."""
    if mode not in MODES:
        raise GptclfError(f"unknown quantization {mode!r}", hint=f"use one of {', '.join(MODES)}")
    backbone = getattr(model, "backbone", model)
    if skip is None:
        skip = registry.family(backbone.config.arch).int8_fp32_linears
    blocks = backbone.trf_blocks
    n_quant = max(len(blocks) - max(keep_last, 0), 0)
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    with warnings.catch_warnings():
        # PyTorch marks its quantized tensor API as deprecated (moving to torchao); it still works.
        warnings.simplefilter("ignore")
        for i in range(n_quant):
            names = {n: qconfig for n, m in blocks[i].named_modules()
                     if isinstance(m, nn.Linear) and not n.endswith(skip or ("\0",))}
            blocks[i] = torch.ao.quantization.quantize_dynamic(blocks[i], names, dtype=torch.qint8)
    return model
