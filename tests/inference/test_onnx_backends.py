"""``--backend torch|onnxruntime`` and ``--int8`` (ONNX Runtime's dynamic int8) on every path
that predicts: Classifier, ``gptclf predict`` (texts and files), ``gptclf evaluate`` and
``gptclf serve``; same outputs from each backend."""

from __future__ import annotations

import ast
import csv
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from gptclf.cli import main  # noqa: E402
from gptclf.errors import GptclfError  # noqa: E402
from gptclf.inference import onnx as gonnx  # noqa: E402
from gptclf.inference.classifier import Classifier  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src" / "gptclf"
TEXTS = ["WINNER!! You have won a £1000 cash prize, call 09061701461 now", "ok see you at 5 then",
         "Sorry, I'll call later", "URGENT! Your mobile number has been awarded a £2000 bonus"]


def sms_rows(sms_file: Path, n: int) -> tuple[list[str], list[str]]:
    """Every 10th row of the real collection, n of them: both classes, in file order."""
    rows = [ln.split("\t", 1) for ln in sms_file.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    rows = rows[::10][:n]
    return [t for _, t in rows], [lab for lab, _ in rows]


def _uses_torch_ao(source: str) -> bool:
    """Code (not prose) that reaches torch.ao: an import of it or an attribute chain through it."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.ao"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.ao") for a in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "ao" and isinstance(node.value, ast.Name) \
                and node.value.id == "torch":
            return True
    return False


def test_no_deprecated_torch_quantization_in_the_package() -> None:
    assert _uses_torch_ao("import torch\nq = torch.ao.quantization.quantize_dynamic")  # the check works
    assert not _uses_torch_ao('"""replaces torch.ao.quantization"""')
    assert [p for p in SRC.rglob("*.py") if _uses_torch_ao(p.read_text(encoding="utf-8"))] == []


def test_int8_agrees_with_fp32_on_real_sms(tiny_run: Path, tiny_classifier: Classifier, sms_file: Path) -> None:
    """300 real SMS texts, tiny run: observed 0 label flips, max probability change 0.011,
    test-split accuracy 94.67 % both ways (the limit: 1 flip, 0.5 points)."""
    from helpers import load_data

    q = Classifier.load(tiny_run, quantize="int8")
    assert (q.backend, q.precision) == ("onnxruntime", "int8")
    texts, labels = sms_rows(sms_file, 300)
    p32, p8 = tiny_classifier.predict_proba(texts), q.predict_proba(texts)
    assert (p32.argmax(1) != p8.argmax(1)).sum() <= 1
    assert np.abs(p32 - p8).max() < 0.05
    test = load_data(str(sms_file), seed=123, balance="undersample").test
    a32 = tiny_classifier.evaluate([e.text for e in test], [e.label for e in test])["accuracy"]
    a8 = q.evaluate([e.text for e in test], [e.label for e in test])["accuracy"]
    assert abs(a32 - a8) <= 0.005
    # The int8 graph really is int8 where it should be, and fp32 where the family says.
    import onnx

    ops = [n.op_type for n in onnx.load(str(gonnx.graph_path(gonnx.cache_path(tiny_run), "int8"))).graph.node]
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") == 6  # qkv, out_proj, fc x 2 blocks
    info = json.loads((gonnx.cache_path(tiny_run) / "onnx.json").read_text())
    assert info["int8"]["fp32_linears"] == 2 and info["int8"]["kept_fp32"] == ["ff.proj"]


def test_onnxruntime_fp32_equals_torch_and_reuses_its_export(tiny_run: Path, tiny_classifier: Classifier,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ort_clf = Classifier.load(tiny_run, backend="onnxruntime", threads=1)
    assert (ort_clf.backend, ort_clf.precision, ort_clf.directory) == ("onnxruntime", "fp32", tiny_run)
    assert np.abs(ort_clf.predict_proba(TEXTS, batch_size=3) - tiny_classifier.predict_proba(TEXTS)).max() <= 1e-4
    assert [r["label"] for r in ort_clf.predict(TEXTS)] == [r["label"] for r in tiny_classifier.predict(TEXTS)]

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(gonnx, "write_onnx_dir", no_export)
    Classifier.load(tiny_run, backend="onnxruntime")  # from the cache


def _run(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--backend", "torch"], ["--backend", "onnxruntime"], ["--int8"]])
def test_predict_and_evaluate_cli_with_each_backend(tiny_run: Path, tiny_classifier: Classifier, sms_file: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   flags: list[str]) -> None:
    want = tiny_classifier.predict(TEXTS)
    tol = 0.05 if "--int8" in flags else 1e-4
    lines = _run(capsys, "predict", "--model", str(tiny_run), "--json", *flags, *TEXTS).splitlines()
    got = [json.loads(x) for x in lines]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) <= tol

    texts, labels = sms_rows(sms_file, 60)
    table = tmp_path / "in.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *zip(texts, labels)])
    _run(capsys, "predict", "--model", str(tiny_run), "--input", str(table), "--output", str(tmp_path / "out.csv"),
         "--quiet", *flags)
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    p = tiny_classifier.predict_proba(texts)
    assert [r["predicted_label"] for r in rows] == [tiny_classifier.labels[k] for k in p.argmax(1)]
    assert np.abs(np.array([float(r["p_spam"]) for r in rows]) - p[:, 1]).max() <= tol

    report = json.loads(_run(capsys, "evaluate", "--model", str(tiny_run), "--data", str(table), "--json", *flags))
    expected = tiny_classifier.evaluate(texts, labels)
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    assert report["loss"] == pytest.approx(expected["loss"], abs=tol)


def test_serve_app_with_onnxruntime_answers_as_torch(tiny_run: Path, tiny_classifier: Classifier) -> None:
    from fastapi.testclient import TestClient

    from gptclf.inference.serve.app import create_app

    with TestClient(create_app(Classifier.load(tiny_run, backend="onnxruntime"))) as c:
        got = c.post("/v1/classify", json={"texts": TEXTS}).json()["results"]
        info = c.get("/v1/model").json()
    want = tiny_classifier.predict(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) <= 1e-4
    assert (info["backend"], info["precision"]) == ("onnxruntime", "fp32")
    assert info["metrics"]["test_accuracy"] > 0  # the run's own metrics, not the cache's


def test_gptclf_serve_int8_process(tiny_run: Path, tiny_classifier: Classifier) -> None:
    from helpers import serve_process

    with serve_process(tiny_run, "--int8", "--threads", "1") as (url, _):
        info = json.loads(urllib.request.urlopen(f"{url}/v1/model", timeout=30).read())
        req = urllib.request.Request(f"{url}/v1/classify", data=json.dumps({"texts": TEXTS}).encode(),
                                     headers={"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())["results"]
    assert (info["backend"], info["precision"]) == ("onnxruntime", "int8")
    assert [g["label"] for g in got] == [r["label"] for r in tiny_classifier.predict(TEXTS)]


def test_backend_errors_say_what_to_do(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(GptclfError, match="int8 inference runs on ONNX Runtime"):
        Classifier.load(tiny_run, backend="torch", quantize="int8")
    with pytest.raises(GptclfError, match="runs on the CPU"):
        Classifier.load(tiny_run, backend="onnxruntime", device="cuda")
    with pytest.raises(GptclfError, match="unknown backend"):
        Classifier.load(tiny_run, backend="tensorrt")
    with pytest.raises(GptclfError, match="does not exist"):
        Classifier.load(tmp_path / "nothing", backend="onnxruntime")
    exported = gonnx.cache_path(tiny_run)
    Classifier.load(tiny_run, backend="onnxruntime")
    with pytest.raises(GptclfError, match="no model.safetensors"):
        Classifier.load(exported, backend="torch")
    assert main(["predict", "--model", str(tiny_run), "--threads", "-1", "x"]) != 0
