"""A multi-label run directory through every prediction path: Classifier.predict/predict_proba/
evaluate, gptclf predict (texts and --input files), gptclf serve (responses and OpenAPI schema),
the ONNX backend; and single-label runs answer exactly as before."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gptclf.data.tables import label_sets, read_table
from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from helpers import cli, random_classifier, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ("cats", "dogs", "fish")
# cats always passes its threshold, dogs never does (a sigmoid is in (0.001, 0.999) for the
# small logits of a fresh tiny head), fish is the model's call.
THRESHOLDS = {"cats": 0.001, "dogs": 0.999, "fish": 0.5}
TEXTS = ["a cat on a mat", "the dog barked", "", "fish swim " * 3]


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory, micro_gpt2_config: Path) -> Path:
    model = random_classifier(micro_gpt2_config, LABELS, seed=1)
    return write_run(tmp_path_factory.mktemp("ml") / "run", model, LABELS, multi_label=True,
                     thresholds=THRESHOLDS, train={"epochs": 1, "label_delimiter": ";"})


@pytest.fixture(scope="module")
def clf(ml_run: Path) -> Classifier:
    return Classifier.load(ml_run, device="cpu")


def _expected(scores: dict[str, float]) -> list[str]:
    return sorted((lab for lab, p in scores.items() if p >= THRESHOLDS[lab]), key=lambda lab: -scores[lab])


def test_predict_returns_the_labels_over_their_thresholds(clf: Classifier) -> None:
    probs = clf.predict_proba(TEXTS)
    assert probs.shape == (4, 3) and ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(1), 1.0)  # independent sigmoids, not a softmax
    results = clf.predict(TEXTS)
    for r, p in zip(results, probs):
        assert r.keys() == {"labels", "scores", "truncated", "empty"}
        assert r["scores"] == pytest.approx(dict(zip(LABELS, p.tolist())))
        assert r["labels"] == _expected(r["scores"])
        assert "cats" in r["labels"] and "dogs" not in r["labels"]
    assert results[2]["empty"] and not results[0]["empty"]
    with pytest.raises(GptclfError, match="list of labels per text"):
        clf.evaluate(["a"], ["cats"])


def test_evaluate_scores_label_sets(clf: Classifier) -> None:
    rep = clf.evaluate(TEXTS[:2], [["cats"], ["dogs", "fish"]], mistakes=5)
    assert rep["multi_label"] and rep["n"] == 2 and rep["thresholds"] == THRESHOLDS
    assert rep["per_class"]["cats"]["recall"] == 1.0 and rep["per_class"]["dogs"]["recall"] == 0.0
    assert rep["mistakes"] and rep["mistakes"][0]["true"] == "dogs, fish"
    with pytest.raises(GptclfError, match=r"\['birds'\] are not among"):
        clf.evaluate(["a"], [["birds"]])


def test_single_label_runs_answer_as_before(random_run: Path) -> None:
    old = Classifier.load(random_run, device="cpu")
    assert not old.multi_label
    assert "multi_label" not in json.loads((random_run / "config.json").read_text())
    r = old.predict(["hello"])[0]
    assert r.keys() == {"label", "score", "scores", "truncated", "empty"}
    assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_texts(ml_run: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(capsys, "predict", "--model", str(ml_run), "--device", "cpu", "--json", *TEXTS[:2])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2] and all("cats" in r["labels"] for r in rows)
    code, out, err = cli(capsys, "predict", "--model", str(ml_run), "--device", "cpu", TEXTS[0])
    assert code == 0 and out.startswith("cats ") and out.rstrip().endswith("\t" + TEXTS[0])


def test_cli_predict_files_write_label_lists(ml_run: Path, clf: Classifier, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], *[[i, t] for i, t in enumerate(TEXTS)]])
    expected = [r["labels"] for r in clf.predict(TEXTS)]
    for name in ("out.csv", "out.jsonl"):
        code, _, err = cli(capsys, "predict", "--model", str(ml_run), "--device", "cpu", "--input", str(src),
                           "--output", str(tmp_path / name), "--quiet")
        assert code == 0, err
    header = (tmp_path / "out.csv").read_text().splitlines()[0]
    assert header == "id,text,predicted_labels,p_cats,p_dogs,p_fish,truncated"
    # The CSV joins with the run's --label-delimiter (';' here), so train --multi-label reads it back.
    back = read_table(tmp_path / "out.csv", label_column="predicted_labels", read_labels=label_sets(";"))
    assert [list(e.labels) for e in back] == expected
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["predicted_labels"] for x in lines] == expected and "predicted_label" not in lines[0]


def test_serve_answers_label_lists_and_documents_them(clf: Classifier) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gptclf.inference.serve.app import create_app

    with TestClient(create_app(clf)) as client:
        r = client.post("/v1/classify", json={"texts": TEXTS[:2]})
        assert r.status_code == 200
        for res in r.json()["results"]:
            assert res.keys() == {"labels", "scores", "truncated", "empty"}
            assert res["labels"] == _expected(res["scores"])
        info = client.get("/v1/model").json()
        assert info["multi_label"] is True and info["thresholds"] == THRESHOLDS
        schema = client.get("/openapi.json").json()
        page = client.get("/").text
    ok = schema["paths"]["/v1/classify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    # One model's answer, several models' answer, vLLM's answer.
    assert any(x["$ref"].endswith("/MultiLabelClassifyResponse") for x in ok["anyOf"])
    item = schema["components"]["schemas"]["MultiLabelPrediction"]
    assert item["properties"]["labels"]["type"] == "array" and "label" not in item["properties"]
    assert "Array.isArray(res.labels)" in page


def test_serve_single_label_schema_is_unchanged(random_run: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gptclf.inference.serve.app import create_app

    with TestClient(create_app(Classifier.load(random_run, device="cpu"))) as client:
        res = client.post("/v1/classify", json={"texts": ["x"]}).json()["results"][0]
        schema = client.get("/openapi.json").json()
        assert "multi_label" not in client.get("/v1/model").json()
    assert res.keys() == {"label", "score", "scores", "truncated", "empty"}
    assert "MultiLabelPrediction" not in schema["components"]["schemas"]


def test_onnx_backend_applies_the_sigmoid(ml_run: Path, clf: Classifier, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from gptclf.inference.onnx import write_onnx_dir

    out = write_onnx_dir(clf, tmp_path / "onnx", int8=False, source=ml_run)
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["multi_label"] and manifest["thresholds"] == THRESHOLDS and "sigmoid" in manifest["outputs"]["probabilities"]
    onnx = Classifier.load(out)
    assert onnx.backend == "onnxruntime" and onnx.multi_label
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-5)
    assert [r["labels"] for r in onnx.predict(TEXTS)] == [r["labels"] for r in clf.predict(TEXTS)]
