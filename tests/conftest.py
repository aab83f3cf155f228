from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMS_FILE = ROOT.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's cache or the network from a test.
    monkeypatch.setenv("GPTCLF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gptclf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sms_file() -> Path:
    if not SMS_FILE.exists():
        pytest.skip("the shared SMS Spam Collection copy is not present")
    return SMS_FILE


def write_tiny_gpt2(directory: Path, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_positions: int = 256, seed: int = 0, tie: bool = True) -> Path:
    """A small GPT-2 written by transformers itself (the same format as the hub's)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                     tie_word_embeddings=tie)
    model = GPT2LMHeadModel(cfg)
    if not tie:
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def write_gpt2_config_only(directory: Path, **overrides) -> Path:
    """A Hugging Face config.json with no weights: enough for --init random."""
    cfg = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 128, "n_embd": 32,
           "n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-5}
    cfg.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


@pytest.fixture
def sms_env(sms_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPTCLF_SMS_SPAM", str(sms_file))
    return sms_file


@pytest.fixture(scope="session")
def small_sms(sms_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 ham and 300 spam texts of the real collection as JSONL: enough to see
    a loss fall, and quick to train on 2 cores."""
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    path = tmp_path_factory.mktemp("small-sms") / "small.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for label in ("ham", "spam"):
            for text in [t for lab, t in rows if lab == label][:300]:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, sms_file: Path, tiny_gpt2: Path) -> Path:
    """One tiny GPT-2 fine-tuned on the real SMS data by the real CLI, shared by every test
    that needs a trained model (training it is the slow part of the suite)."""
    import subprocess
    import sys

    runs = tmp_path_factory.mktemp("runs")
    env = env_with(GPTCLF_SMS_SPAM=str(sms_file), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "gptclf", "train", "--model", str(tiny_gpt2), "--trainable", "all",
                        "--lr", "5e-4", "--epochs", "2", "--out", str(runs / "run1")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    return runs / "run1"


@pytest.fixture(scope="session")
def tiny_classifier(tiny_run: Path):
    from gptclf.inference.classifier import Classifier

    return Classifier.load(tiny_run, device="cpu")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: Path, *flags: str):
    """A real ``gptclf serve`` subprocess on a free loopback port: yields (url, process).

    No --host: the default must be loopback (test_soak checks it)."""
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gptclf", "serve", "--model", str(model), "--port", str(port),
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
