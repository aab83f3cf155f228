"""``gptclf export --format onnx``: the graph ONNX Runtime runs gives gptclf's probabilities.

Parity is checked with onnxruntime directly (not through gptclf's session wrapper), on
token ids made by the run's own tokenizer, for GPT-2 and a Llama-family model, every
pooling, the non-causal variant, and batch/sequence sizes other than the traced ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from gptclf.data.batching import collate  # noqa: E402
from gptclf.errors import GptclfError  # noqa: E402
from gptclf.inference import onnx as gonnx  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402
from gptclf.models import registry  # noqa: E402
from gptclf.models.classifier import SequenceClassifier, replace_head  # noqa: E402
from gptclf.models.gpt2 import GPT2Config  # noqa: E402
from gptclf.models.llama import LlamaConfig  # noqa: E402
from gptclf.rundir.save import save_run  # noqa: E402

TEXTS = ["Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005.",
         "Ok lar... Joking wif u oni...", "U dun say so early hor... U c already then say...",
         "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward!",
         "hi", "Nah I don't think he goes to usf, he lives around here though",
         "Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles " * 3]


def ort_probs(path: Path, clf: Classifier, texts: list[str]) -> np.ndarray:
    """Probabilities from a bare onnxruntime session, fed as onnx.json describes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, lens = collate(clf.encode(texts), clf.tokenizer.pad_id)
    logits, probs = session.run(["logits", "probabilities"], {"input_ids": ids.numpy(), "lengths": lens.numpy()})
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), -1).numpy(), atol=1e-6)
    return probs


def test_cli_export_gpt2_run_matches_predict(tiny_run: Path, tiny_classifier: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    r = subprocess.run([sys.executable, "-m", "gptclf", "export", "--format", "onnx", str(tiny_run), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"exported": str(out), "format": "onnx"}  # nothing else on stdout
    info = json.loads((out / "onnx.json").read_text())
    assert info["labels"] == tiny_classifier.labels
    assert info["max_length"] == tiny_classifier.max_length
    assert info["pad_id"] == tiny_classifier.tokenizer.pad_id == 50256
    assert info["pooling"] == "last-nonpad" and info["tokenizer"]["type"] == "tiktoken"
    assert info["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert info["parity"]["fp32_max_abs_diff"] <= 1e-4
    assert (out / "config.json").is_file() and (out / "metrics.json").is_file()

    # Dynamic axes: the graph's inputs have named, not fixed, batch and sequence sizes.
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert all(isinstance(d, str) for d in dims["input_ids"] + dims["lengths"]), dims

    expected = tiny_classifier.predict_proba(TEXTS)
    for texts in (TEXTS, TEXTS[:1], TEXTS[4:5], TEXTS[::-1]):  # batch 7, 1, a 1-token text, reordered
        got = ort_probs(out / "model.onnx", tiny_classifier, texts)
        want = tiny_classifier.predict_proba(texts)
        assert np.abs(got - want).max() <= 1e-4
    # The exported directory itself is a model directory: gptclf runs it on onnxruntime.
    clf = Classifier.load(out)
    assert clf.backend == "onnxruntime" and clf.precision == "fp32"
    assert np.abs(clf.predict_proba(TEXTS) - expected).max() <= 1e-4
    assert Classifier.load(out, quantize="int8").precision == "int8"


def _tiny_llama_run(tmp_path: Path, template: str | None) -> Path:
    """A Llama-family run directory (random head, no training: parity needs no accuracy)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers import make_hf_llama

    from gptclf.loading import load_backbone

    make_hf_llama(tmp_path / "hf", tie=True, n_heads=4, n_kv_heads=2)
    bb = load_backbone(str(tmp_path / "hf"))
    torch.manual_seed(3)
    model = SequenceClassifier(replace_head(bb.model, 3), "last-nonpad")
    clf = Classifier(model, bb.tokenizer, {"labels": ["a", "b", "c"], "max_length": 40, "template": template},
                     torch.device("cpu"))
    return save_run(tmp_path / "run", model.backbone, bb.tokenizer, clf.run_config, {}, {}, update_latest_link=False)


def test_llama_family_run_exports_with_its_tokenizer_and_template(tmp_path: Path) -> None:
    from gptclf.rundir.export import export_onnx

    run = _tiny_llama_run(tmp_path, template="Text: {text}\nLabel:")
    torch_clf = Classifier.load(run, device="cpu")
    out = export_onnx(run, tmp_path / "onnx")
    info = json.loads((out / "onnx.json").read_text())
    assert info["architecture"] == "llama" and info["template"] == "Text: {text}\nLabel:"
    assert info["tokenizer"]["file"] == "tokenizer.json" and (out / "tokenizer.json").is_file()
    assert info["int8"]["kept_fp32"] == ["att.qkv", "ff.proj"]
    # 2 blocks: out_proj and fc quantized in each, qkv and the down projection kept.
    assert (info["int8"]["quantized_linears"], info["int8"]["fp32_linears"]) == (4, 4)
    long_texts = TEXTS + ["word " * 200]  # cut to max_length around the template
    got = ort_probs(out / "model.onnx", torch_clf, long_texts)
    assert np.abs(got - torch_clf.predict_proba(long_texts)).max() <= 1e-4
    via_gptclf = Classifier.load(run, backend="onnxruntime").predict_proba(long_texts)
    assert np.abs(via_gptclf - torch_clf.predict_proba(long_texts)).max() <= 1e-4


@pytest.mark.parametrize("pooling,causal", [("last", True), ("mean", True), ("first", True),
                                            ("last-nonpad", False), ("mean", False)])
def test_every_pooling_and_the_unmasked_variant_export_exactly(tmp_path: Path, pooling: str, causal: bool,
                                                               tiny_classifier: Classifier) -> None:
    torch.manual_seed(0)
    backbone = replace_head(registry.build_model(GPT2Config(vocab_size=50257, context_length=64, emb_dim=32,
                                                            n_heads=2, n_layers=2)), 2)
    model = SequenceClassifier(backbone, pooling, causal=causal)
    clf = Classifier(model, tiny_classifier.tokenizer, {"labels": ["ham", "spam"], "max_length": 48},
                     torch.device("cpu"))
    out = gonnx.write_onnx_dir(clf, tmp_path / "onnx", int8=False)
    assert not (out / "model.int8.onnx").exists()
    got = ort_probs(out / "model.onnx", clf, TEXTS)
    assert np.abs(got - clf.predict_proba(TEXTS)).max() <= 1e-4
    with pytest.raises(GptclfError, match="no int8 ONNX graph"):
        gonnx.graph_path(out, "int8")


def test_llama_graph_handles_any_batch_and_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, context_length=128, emb_dim=32, n_heads=4, n_kv_heads=1, n_layers=2,
                      hidden_dim=48, tie_embeddings=False)
    model = SequenceClassifier(replace_head(registry.build_model(cfg), 4), "last-nonpad").eval()
    gonnx.export_graph(model, tmp_path / "g.onnx")
    session = gonnx.OnnxSession(tmp_path / "g.onnx", threads=1)
    gen = torch.Generator().manual_seed(1)
    for batch, width in [(1, 1), (1, 9), (5, 33), (3, 128)]:
        ids = torch.randint(0, 300, (batch, width), generator=gen)
        lens = torch.randint(1, width + 1, (batch,), generator=gen)
        with torch.inference_mode():
            want = torch.softmax(model(ids, lens), -1).numpy()
        assert np.abs(session(ids.numpy(), lens.numpy()) - want).max() <= 1e-5


def test_export_refuses_a_non_empty_target_and_leaves_no_temporaries(tiny_run: Path, tmp_path: Path) -> None:
    from gptclf.rundir.export import export_onnx

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GptclfError, match="not empty"):
        export_onnx(tiny_run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_export_cli_defaults_to_a_self_contained_gptclf_copy(tiny_run: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "gptclf", "export", str(tiny_run), str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["format"] == "gptclf", r.stderr
    texts = ["win a free prize now", "see you at lunch"]
    a, b = Classifier.load(tiny_run).predict_proba(texts), Classifier.load(tmp_path / "x").predict_proba(texts)
    assert np.array_equal(a, b)
    assert json.loads((tmp_path / "x" / "config.json").read_text()).get("weights", "full") == "full"
