"""The byte-level BPE tokenizer a GGUF file describes in its metadata, rebuilt with ``tokenizers``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import GptclfError
from .base import require
from .hf import HFTokenizer

# llama.cpp's token types (llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer splits, keyed by tokenizer.ggml.pre. llama.cpp names the split each
# vocabulary was trained with; the merges only reproduce the model's tokens with it.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRES = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")
# Qwen2/2.5/3's tokenizer.json: Llama 3's split but one digit per piece, after NFC
# normalization (llama.cpp's "qwen2" pre-tokenizer).
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")



def tokenizer_from_gguf(meta: dict[str, Any], name: str) -> HFTokenizer:
    """Rebuild the byte-level BPE tokenizer a GGUF describes in its metadata.

    Pad id: ``tokenizer.ggml.padding_token_id`` when the file has one, else EOS. For
    SmolLM2-135M-Instruct both are 2 (``<|im_end|>``). Padding never reaches the model's
    prediction (the classifier reads the last real token), so any id would do; EOS is the
    conventional choice and keeps pad inside the vocabulary.
    """
    require("tokenizers")
    from tokenizers import AddedToken, Tokenizer, decoders, models as tk_models, processors

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
    tok.pre_tokenizer, normalizer = _pre_tokenizer(pre, add_prefix)
    if normalizer is not None:
        tok.normalizer = normalizer
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


def _pre_tokenizer(pre: str, add_prefix: bool) -> tuple[Any, Any]:
    """(pre-tokenizer, normalizer or None) for llama.cpp's ``tokenizer.ggml.pre`` name."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)
    if pre == "smollm":
        # SmolLM's tokenizer.json: every digit is its own token, then GPT-2's split.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), None
    if pre in ("default", "gpt-2", "gpt2"):
        return byte_level, None
    if pre in _LLAMA3_PRES or pre == "qwen2":
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT if pre == "qwen2" else _LLAMA3_SPLIT), behavior="isolated")
        seq = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=False)])
        return seq, (normalizers.NFC() if pre == "qwen2" else None)
    raise GptclfError(f"GGUF pre-tokenizer {pre!r} is not supported",
                      hint="supported: smollm, gpt-2/default, llama3 (llama-bpe), qwen2; for other models "
                           "use a Hugging Face directory with tokenizer.json")


def _byte_level_spelling(token: str) -> str:
    """``token`` in GPT-2's byte alphabet. GGUF files normally store it that way already;
    a converter that wrote raw text (a real space instead of "Ġ") gets it re-spelled."""
    table, alphabet = _byte_alphabet()
    if alphabet.issuperset(token):
        return token
    return "".join(table[b] for b in token.encode("utf-8"))
