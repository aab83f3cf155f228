"""GGUF files of the qwen2, qwen3 and phi3 architectures, written the way llama.cpp's
converter writes them (no q/k row permutation: these use its NEOX rotary layout, which is
ours), read back to the source model's logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf import loading

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_gguf import tiny_vocab  # noqa: E402  (a byte-level vocabulary with a few merges)

SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, eos_token_id=0,
             pad_token_id=0, bos_token_id=0)

# name -> (arch, transformers config/model classes, extra config)
CASES = {
    "qwen2": ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=False)),
    "phi3": ("phi3", "Phi3Config", "Phi3ForCausalLM",
             dict(partial_rotary_factor=0.5, sliding_window=5, tie_word_embeddings=False)),
}

PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{PARTS[part]}.{kind}"


def write_family_gguf(path: Path, name: str):
    arch, cfg_cls, model_cls, extra = CASES[name]
    tokens, types, merges = tiny_vocab()
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=len(tokens), **SHAPE, **extra)
    hf = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
            elif pname.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    head_dim = extra.get("head_dim", 16)
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(int(head_dim * extra.get("partial_rotary_factor", 1.0)))
    if "sliding_window" in extra:
        w.add_sliding_window(extra["sliding_window"])
    w.add_tokenizer_model("gpt2")
    # Real Phi-3 GGUFs carry a SentencePiece vocabulary, which gptclf's GGUF reader refuses;
    # the architecture is what is tested here.
    w.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(0)
    sd = hf.state_dict()
    if extra.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)
    for hf_name, t in sd.items():
        w.add_tensor(gguf_name(hf_name), np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.mark.parametrize("name", sorted(CASES))
def test_gguf_reproduces_the_source_model(tmp_path: Path, name: str) -> None:
    hf = write_family_gguf(tmp_path / "m.gguf", name)
    bb = loading.load_backbone(str(tmp_path / "m.gguf"))
    assert bb.model.config.arch == CASES[name][0]
    ids = torch.randint(0, 200, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (bb.model.eval()(ids) - hf(ids).logits).abs().max().item() < 2e-4
    assert bb.tokenizer.decode(bb.tokenizer.encode("hello there")) == "hello there"
    if name.startswith("qwen"):  # Qwen's pre-tokenizer: one digit per piece
        assert len(bb.tokenizer.encode("12345")) == 5
