"""int8 inference: which linears are quantized, and that predictions stay put."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gptclf.models import registry as models
from gptclf.models.classifier import SequenceClassifier, replace_head
from gptclf.errors import GptclfError
from gptclf.models.gpt2 import GPT2Config
from gptclf.models.llama import LlamaConfig
from gptclf.inference.quantize import quantize_model

QLinear = torch.ao.nn.quantized.dynamic.Linear


def _classifier(cfg) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(replace_head(models.build_model(cfg), 2)).eval()


def _kinds(model: SequenceClassifier) -> dict[str, str]:
    block = model.backbone.trf_blocks[0]
    return {n: ("int8" if isinstance(m, QLinear) else "fp32") for n, m in block.named_modules()
            if isinstance(m, (nn.Linear, QLinear))}


def test_gpt2_keeps_the_down_projection_fp32_and_keeps_predictions() -> None:
    model = _classifier(GPT2Config(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_layers=2))
    ids = torch.randint(0, 300, (16, 20))
    lengths = torch.full((16,), 20)
    with torch.inference_mode():
        p32 = torch.softmax(model(ids, lengths), -1)
        quantize_model(model, "int8")
        p8 = torch.softmax(model(ids, lengths), -1)
    kinds = _kinds(model)
    assert {n for n, k in kinds.items() if k == "fp32"} == {"ff.proj"}
    assert {n for n, k in kinds.items() if k == "int8"} == {"att.qkv", "att.out_proj", "ff.fc"}
    assert isinstance(model.backbone.out_head, nn.Linear)  # the head stays fp32
    assert (p8 - p32).abs().max() < 0.05


def test_llama_keeps_its_outlier_linears_in_fp32() -> None:
    model = _classifier(LlamaConfig(vocab_size=300, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2,
                                    n_layers=2, hidden_dim=128))
    quantize_model(model, "int8")
    kinds = _kinds(model)
    assert {n for n, k in kinds.items() if k == "fp32"} == {"att.qkv", "ff.proj"}
    assert {n for n, k in kinds.items() if k == "int8"} == {"att.out_proj", "ff.fc"}


def test_keep_last_and_explicit_skip() -> None:
    model = _classifier(GPT2Config(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_layers=3))
    quantize_model(model, "int8", keep_last=1, skip=("ff.fc",))
    blocks = model.backbone.trf_blocks
    assert isinstance(blocks[0].ff.proj, QLinear) and isinstance(blocks[0].ff.fc, nn.Linear)
    assert all(isinstance(m, nn.Linear) for m in blocks[2].modules() if isinstance(m, (nn.Linear, QLinear)))
    with pytest.raises(GptclfError, match="unknown quantization"):
        quantize_model(model, "int4")


def test_int8_classifier_agrees_with_fp32_on_real_texts(tiny_run: Path, sms_file: Path) -> None:
    from gptclf.inference.classifier import Classifier

    texts = [line.split("\t", 1)[1] for line in sms_file.read_text(encoding="utf-8").splitlines()[:200]]
    p32 = Classifier.load(tiny_run).predict_proba(texts)
    p8 = Classifier.load(tiny_run, quantize="int8").predict_proba(texts)
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.98
    assert np.abs(p8 - p32).max() < 0.1
