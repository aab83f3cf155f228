"""``gptclf export --format hf``: transformers loads the directory and gives gptclf's
probabilities; one test per family also trains, predicts (fp32 and int8) and runs LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gptclf
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.rundir.hf_export import export_hf

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_llama_like_families import make_hf  # noqa: E402  (the tiny checkpoints of each family)

TEXTS = [
    "WINNER!! You have been selected to receive a £900 prize reward! Call 09061701461 now",
    "Ok lar... Joking wif u oni...",
    "I'll be home in 10 minutes, do you want anything from the shop?",
    "text with the pad token <|endoftext|> typed into it <|endoftext|>",
    "URGENT! Your mobile number has won £2000. To claim txt WIN to 80086 " * 3,  # truncated
    "k",
]


def hf_probabilities(out: Path, texts: list[str], max_length: int) -> np.ndarray:
    """What a transformers user gets: AutoTokenizer + AutoModelForSequenceClassification."""
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    return torch.softmax(logits, -1).numpy()


def assert_same_probabilities(run: Path, out: Path) -> None:
    clf = Classifier.load(run, device="cpu")
    ours = clf.predict_proba(TEXTS)
    theirs = hf_probabilities(out, TEXTS, clf.max_length)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {str(i): lab for i, lab in enumerate(clf.labels)}
    assert cfg["label2id"] == {lab: i for i, lab in enumerate(clf.labels)}
    assert cfg["pad_token_id"] == clf.tokenizer.pad_id
    assert np.abs(ours - theirs).max() < 1e-4, (ours, theirs)


def test_gpt2_run_with_a_head_bias_exports_exactly(tiny_run: Path, tmp_path: Path) -> None:
    """GPT-2's head bias is folded into the final LayerNorm's bias; the CLI path."""
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "gptclf", "export", "--format", "hf", str(tiny_run), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "hf"
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()
    assert_same_probabilities(tiny_run, out)
    # The GPT-2 tokenizer transformers loads is GPT-2's own BPE.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    clf = Classifier.load(tiny_run, device="cpu")
    assert tok(TEXTS[0])["input_ids"] == clf.tokenizer.encode(TEXTS[0])


def test_export_refuses_what_transformers_cannot_express(tiny_run: Path, tmp_path: Path) -> None:
    cfg_path = tiny_run / "config.json"
    original = cfg_path.read_text()
    try:
        for key, value, words in (("pooling", "mean", "pooling 'mean'"), ("template", "Q: {text}", "--template"),
                                  ("causal_mask", False, "--no-causal-mask")):
            cfg = json.loads(original)
            cfg[key] = value
            cfg_path.write_text(json.dumps(cfg))
            with pytest.raises(GptclfError, match=words):
                export_hf(tiny_run, tmp_path / f"out-{key}")
            assert not (tmp_path / f"out-{key}").exists()
    finally:
        cfg_path.write_text(original)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(GptclfError, match="already exists"):
        export_hf(tiny_run, tmp_path / "busy")


FAMILY_CHECKPOINTS = ["qwen2", "qwen3", "mistral", "phi3-partial-rotary", "llama", "gemma2", "gemma3"]


def tiny_checkpoint(directory: Path, name: str) -> Path:
    if name == "llama":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from helpers import make_hf_llama

        make_hf_llama(directory, tie=True, n_heads=4, n_kv_heads=2)
    elif name.startswith("gemma"):
        from test_gemma_families import make_hf as make_gemma

        make_gemma(directory, name)
    else:
        make_hf(directory, name)
    return directory


@pytest.fixture(scope="module")
def tiny_sms(small_sms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 texts of each class: the per-family runs prove the wiring, not accuracy."""
    rows = [json.loads(line) for line in small_sms.read_text(encoding="utf-8").splitlines()]
    path = tmp_path_factory.mktemp("tiny-sms") / "tiny.jsonl"
    keep = [r for r in rows if r["label"] == "ham"][:100] + [r for r in rows if r["label"] == "spam"][:100]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_each_family_trains_predicts_quantizes_lora_and_exports(tmp_path: Path, tiny_sms: Path,
                                                                name: str) -> None:
    base = tiny_checkpoint(tmp_path / "base", name)
    common = dict(model=str(base), data=str(tiny_sms), epochs=1, max_length=32, long_text="truncate", batch_size=16,
                  eval_freq=1000, progress=False, head_bias=False)
    run = Path(gptclf.train(**common, trainable="last_block", lr=1e-3, out=str(tmp_path / "run")))
    clf = Classifier.load(run, device="cpu")
    preds = clf.predict(TEXTS)
    assert [p["label"] in ("ham", "spam") for p in preds] == [True] * len(TEXTS)
    q = Classifier.load(run, device="cpu", quantize="int8").predict_proba(TEXTS)
    assert np.abs(q - clf.predict_proba(TEXTS)).max() < 0.1

    lora = Path(gptclf.train(**common, trainable="lora", lora_rank=4, lr=2e-3, out=str(tmp_path / "lora")))
    assert json.loads((lora / "config.json").read_text())["lora"]  # adapters saved, merged on load
    assert Classifier.load(lora, device="cpu").predict_proba(TEXTS).shape == (len(TEXTS), 2)
    for src in (run, lora):
        out = tmp_path / f"hf-{src.name}"
        export_hf(src, out)
        assert_same_probabilities(src, out)


def test_rmsnorm_run_with_a_head_bias_is_refused(tmp_path: Path, tiny_sms: Path) -> None:
    base = tiny_checkpoint(tmp_path / "base", "qwen2")
    run = Path(gptclf.train(model=str(base), data=str(tiny_sms), epochs=1, max_length=32, long_text="truncate", batch_size=32,
                            eval_freq=1000, progress=False, trainable="last_layer", head_bias=True,
                            out=str(tmp_path / "run")))
    with pytest.raises(GptclfError, match="--no-head-bias"):
        export_hf(run, tmp_path / "hf")


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_default_run_of_any_family_exports(tmp_path: Path, tiny_sms: Path, tiny_gpt2: Path, name: str) -> None:
    """No option needed: a Llama-family run trains without a head bias (as Hugging Face's heads),
    GPT-2 keeps the book's bias, which the export folds into ln_f."""
    base = tiny_gpt2 if name == "gpt2" else tiny_checkpoint(tmp_path / "base", name)
    run = Path(gptclf.train(model=str(base), data=str(tiny_sms), epochs=1, max_length=32, long_text="truncate", batch_size=32,
                            eval_freq=1000, progress=False, trainable="last_layer", out=str(tmp_path / "run")))
    assert json.loads((run / "config.json").read_text()).get("head_bias", True) is (name == "gpt2")
    export_hf(run, tmp_path / "hf")
    assert_same_probabilities(run, tmp_path / "hf")


def test_an_ordinary_pad_token_is_refused(tmp_path: Path) -> None:
    """A pad id that a text can produce would end Hugging Face's pad search early."""
    from gptclf.rundir.hf_export import _pad_token
    from gptclf.tokenizers.hf import HFTokenizer
    from test_llama_like_families import write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path)
    special = HFTokenizer.from_file(tmp_path / "tokenizer.json", pad_id=0)
    assert _pad_token(special, tmp_path) == "<|endoftext|>"
    ordinary = HFTokenizer.from_file(tmp_path / "tokenizer.json", pad_id=special.encode("a")[0])
    with pytest.raises(GptclfError, match="ordinary token"):
        _pad_token(ordinary, tmp_path)


def test_export_of_a_missing_run_is_one_clear_message(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "gptclf", "export", str(tmp_path / "run"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(tmp_path / "run") in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
