"""Hugging Face ``tokenizer.json`` tokenizers (through the ``tokenizers`` package).

They serve Hugging Face model directories, GGUF files (whose vocabulary and merges
:mod:`gptclf.tokenizers.gguf` turns into one) and fine-tuned run directories, which keep
a copy of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import GptclfError
from ..files import file_inside, plain_name, read_json
from .base import require


class HFTokenizer:
    """A ``tokenizers`` tokenizer (a ``tokenizer.json``) behind gptclf's Tokenizer protocol.

    Special tokens (``<|im_start|>``, ``<|endoftext|>``, ...) typed in user text are
    encoded as the plain characters they are, unless ``allow_special=True``: a data set
    must not be able to inject control tokens. That is ``tokenizers``'
    ``encode_special_tokens`` switch, so we keep two copies, one with it on.
    """

    def __init__(self, tok: Any, pad_id: int, name: str = "hf-tokenizers") -> None:
        require("tokenizers")
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
        require("tokenizers")
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

    def special_token(self, token_id: int) -> str | None:
        """The text of ``token_id`` if it is a special token (one no text encodes to), else None."""
        special = {t.content for t in self._special.get_added_tokens_decoder().values() if t.special}
        token = self._special.id_to_token(int(token_id))
        return token if token in special else None

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
    if not path.is_file():
        return {}
    obj = read_json(file_inside(path.parent, path.name))  # bounded; no link out of the directory
    return obj if isinstance(obj, dict) else {}


def from_config(cfg: dict[str, Any], directory: Path | None) -> HFTokenizer:
    """The tokenizer a run directory's config.json describes (its file is in ``directory``)."""
    if directory is None:
        raise GptclfError("an hf-tokenizers tokenizer needs the model directory holding its file")
    file = cfg.get("file", "tokenizer.json")
    # config.json comes with the model, possibly from someone else: it may only name a file
    # inside the model directory, never '../../somewhere' or an absolute path.
    if not plain_name(file):
        raise GptclfError(f"{directory}: the tokenizer file {file!r} in config.json is not a plain file name",
                          hint="a model directory's config.json may only name files inside the directory")
    pad_id = cfg.get("pad_id")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise GptclfError(f"{directory}: the tokenizer's pad_id {pad_id!r} is not a token id")
    return HFTokenizer.from_file(file_inside(Path(directory), file), pad_id=pad_id, name=str(cfg.get("name", "hf-tokenizers")))
