"""``gptclf export --format hf RUN OUT``: a fine-tuned classifier as a Hugging Face
``*ForSequenceClassification`` directory, which ``transformers``'
``AutoModelForSequenceClassification.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)`` load and which gives ``gptclf predict``'s probabilities.

What has to line up, and why each check exists:

* **Pooling.** Hugging Face reads, per row, the rightmost token that is not
  ``pad_token_id``. gptclf reads the last real token by *length*. They agree when the pad id
  never comes out of tokenizing a text: the pad token is a special token, and the exported
  tokenizer is told to split special tokens typed in text (``split_special_tokens``), as
  gptclf's own tokenizers do. A pad that is an ordinary token is refused.
* **The head's bias.** Hugging Face's ``score`` layer has none. For GPT-2 the bias is folded
  exactly into the final LayerNorm's bias (``W @ pinv(W) @ b == b`` when W has full row
  rank; checked). An RMSNorm model has no bias to fold into: a run with a non-zero head bias
  is refused with the hint to train with ``--no-head-bias``.
* **Settings Hugging Face cannot express** (pooling other than the last real token, a
  template, no causal mask) are refused, naming the setting.
* LoRA runs are exported merged (the classifier is loaded, which merges the adapters).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import GptclfError
from ..files import atomic_directory, write_json_atomic
from ..models import registry


def export_hf(src: str | Path, out: str | Path) -> Path:
    """Write ``out`` (a new directory) from the run directory ``src``."""
    from ..inference.classifier import Classifier

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptclfError(f"{out} already exists", hint="export into a new (or empty) directory")
    clf = Classifier.load(src, device="cpu")
    cfg = clf.run_config
    _check_expressible(cfg, src)
    backbone = clf.model.backbone
    arch = backbone.config
    fam = registry.family(arch.arch)
    if fam.to_hf is None or fam.hf_export_config is None:
        raise GptclfError(f"{src}: the {arch.arch} family has no Hugging Face export")
    sd = {k: v.detach().float() for k, v in backbone.state_dict().items()}
    # The run's calibration temperature divides the logits: fold it into the head, exactly as
    # gptclf applies it (softmax(logits / T)), since transformers has no such setting.
    for k in ("out_head.weight", "out_head.bias"):
        if k in sd:
            sd[k] = sd[k] / clf.temperature
    tensors = fam.to_hf(sd, arch)
    tensors["score.weight"] = _fold_head_bias(sd, tensors, arch.arch, src)
    pad_token = _pad_token(clf.tokenizer, src)
    config = {
        **fam.hf_export_config(arch),
        "num_labels": len(clf.labels),
        "id2label": {str(i): lab for i, lab in enumerate(clf.labels)},
        "label2id": {lab: i for i, lab in enumerate(clf.labels)},
        "pad_token_id": int(clf.tokenizer.pad_id),
        "problem_type": clf.task.hf_problem_type,
        "torch_dtype": "float32", "dtype": "float32",
        "gptclf": {"exported_from": str(src.resolve()), "max_length": clf.max_length,
                   **clf.task.hf_fields(clf.labels, clf.thresholds)},
    }
    _write_dir(out, tensors, config, clf, pad_token, src)
    return out


def _check_expressible(cfg: Any, src: Path) -> None:
    long_text = cfg.long_text_mode
    if long_text.chunked:
        raise GptclfError(f"{src}: the run reads long texts in windows (--long-text chunk), which Hugging Face's "
                          "*ForSequenceClassification cannot express: it classifies one input of at most "
                          "max_length tokens, with no learned pooling over windows",
                          hint="use the run itself, 'gptclf export --format onnx' (the window pool runs beside "
                               "the graph), or retrain with --long-text truncate to export it")
    if long_text.mode == "head-tail":
        raise GptclfError(f"{src}: the run keeps each long text's first and last tokens (--long-text head-tail), "
                          "which a Hugging Face tokenizer's truncation cannot express",
                          hint="use the run itself or 'gptclf export --format onnx', or retrain with "
                               "--long-text truncate to export it")
    if cfg.pooling != "last-nonpad":
        raise GptclfError(f"{src}: pooling {cfg.pooling!r} cannot be exported to Hugging Face",
                          hint="its *ForSequenceClassification reads the last non-padding token only "
                               "(gptclf's --pooling last-nonpad, the default); retrain with that pooling")
    if cfg.template:
        raise GptclfError(f"{src}: the run's --template ({cfg.template!r}) cannot be exported to Hugging Face",
                          hint="a Hugging Face tokenizer would not wrap the texts; retrain without "
                               "--template, or use the gptclf directory")
    if not cfg.causal_mask:
        raise GptclfError(f"{src}: --no-causal-mask cannot be exported to Hugging Face",
                          hint="its decoder models always apply the causal mask")


def _fold_head_bias(sd: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], arch: str,
                    src: Path) -> torch.Tensor:
    """The class head's weight for ``score``; its bias folded into the final norm's bias
    (GPT-2), or refused where there is none to fold into."""
    w, b = sd["out_head.weight"], sd.get("out_head.bias")
    if b is None or not b.any():
        return w.contiguous()
    if "transformer.ln_f.bias" not in tensors:
        raise GptclfError(f"{src}: the class head has a bias, which a Hugging Face {arch} classifier cannot "
                          "hold (its 'score' layer has none, and RMSNorm has no bias to fold it into)",
                          hint="retrain with --no-head-bias to export this model to Hugging Face")
    # score(norm(x) + delta) = W norm(x) + W delta; pick delta with W delta = b.
    delta = torch.linalg.pinv(w.double()) @ b.double()
    if (w.double() @ delta - b.double()).abs().max().item() > 1e-6 * max(1.0, b.abs().max().item()):
        raise GptclfError(f"{src}: the class head's bias cannot be folded into the final LayerNorm "
                          "(its weight does not have full row rank)",
                          hint="retrain with --no-head-bias to export this model to Hugging Face")
    tensors["transformer.ln_f.bias"] = (tensors["transformer.ln_f.bias"].double() + delta).float()
    return w.contiguous()


def _pad_token(tokenizer: Any, src: Path) -> str:
    """The pad token's text; refused unless it is a special token (never produced by a text)."""
    from ..tokenizers.gpt2 import GPT2Tokenizer

    if isinstance(tokenizer, GPT2Tokenizer):
        return "<|endoftext|>"  # 50256: tiktoken's encode_ordinary never produces it
    token = tokenizer.special_token(tokenizer.pad_id)
    if token is None:
        raise GptclfError(f"{src}: the pad token (id {tokenizer.pad_id}) is an ordinary token, so "
                          "Hugging Face's last-non-padding-token pooling could stop early on a text that "
                          "contains it",
                          hint="give the model's tokenizer_config.json a special pad_token (or EOS) and "
                               "retrain, or keep using the gptclf directory")
    return token


def _write_dir(out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], clf: Any,
               pad_token: str, src: Path) -> None:
    """Everything into a temporary directory, renamed into place only when complete."""
    from safetensors.torch import save_file

    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        write_json_atomic(tmp / "config.json", config)
        _write_tokenizer(tmp, clf, pad_token, src)


def _write_tokenizer(directory: Path, clf: Any, pad_token: str, src: Path) -> None:
    """tokenizer.json + tokenizer_config.json (and GPT-2's vocab.json/merges.txt)."""
    from ..tokenizers.gpt2 import GPT2Tokenizer, gpt2_bpe_files

    if isinstance(clf.tokenizer, GPT2Tokenizer):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        encoder_json, vocab_bpe = gpt2_bpe_files()
        shutil.copyfile(encoder_json, directory / "vocab.json")
        shutil.copyfile(vocab_bpe, directory / "merges.txt")
        tok = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
        tok.save(str(directory / "tokenizer.json"))
        extra: dict[str, Any] = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                 "unk_token": "<|endoftext|>", "add_prefix_space": False}
    else:
        clf.tokenizer.save(directory)
        extra = {}
    write_json_atomic(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": pad_token,
        **extra,
        # gptclf cut texts to max_length at training: tokenizer(..., truncation=True) does the same.
        "model_max_length": clf.max_length,
        # Pad on the right: the rotary/learned positions of real tokens then start at 0, as in gptclf.
        "padding_side": "right",
        # Special tokens typed in a text are plain text to gptclf; this makes them so here too.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    })
