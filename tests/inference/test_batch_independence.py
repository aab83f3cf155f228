"""A text's prediction does not depend on its batch: neighbours, padding, batch size or order."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.errors import DataWarning
from gptclf.inference.classifier import Classifier
from gptclf.loading import load_backbone
from gptclf.models.classifier import SequenceClassifier, replace_head
from gptclf.tokenizers.gpt2 import GPT2Tokenizer

from helpers import any_text, examples, random_classifier


def test_a_texts_score_does_not_depend_on_its_batch() -> None:
    bb = load_backbone("gpt2", init="random")
    model = SequenceClassifier(replace_head(bb.model, 2), "last-nonpad").eval()
    for p in model.parameters():
        p.requires_grad = False
    clf = Classifier(model, bb.tokenizer, {"labels": ["a", "b"], "max_length": 64, "padding": "dynamic"},
                     torch.device("cpu"))
    texts = ["short", "a somewhat longer text with many more tokens in it than the first", "mid length one"]
    alone = [clf.predict_proba([t])[0] for t in texts]
    together = clf.predict_proba(texts, batch_size=3)
    for a, b in zip(alone, together):
        assert abs(a - b).max() < 1e-5
    mean_model = SequenceClassifier(bb.model, "mean").eval()
    clf.model = mean_model
    alone = [clf.predict_proba([t])[0] for t in texts]
    assert abs(clf.predict_proba(texts)[0] - alone[0]).max() < 1e-5


@pytest.fixture(scope="module")
def tiny_clf(micro_gpt2_config: Path) -> Classifier:
    model = random_classifier(micro_gpt2_config, ("neg", "neu", "pos"), seed=1)
    return Classifier(model, GPT2Tokenizer(), {"labels": ["neg", "neu", "pos"], "max_length": 32,
                                               "padding": "dynamic"}, torch.device("cpu"))


@pytest.mark.usefixtures("one_thread")  # a tiny model: fastest on one thread
@settings(max_examples=examples(40))
@given(texts=st.lists(any_text, min_size=0, max_size=12), batch_size=st.integers(1, 8), data=st.data())
def test_predictions_one_per_text_in_order_and_batch_independent(tiny_clf: Classifier, texts, batch_size, data) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        probs = tiny_clf.predict_proba(texts, batch_size=batch_size)
        assert probs.shape == (len(texts), 3)
        if not texts:
            return
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        alone = np.stack([tiny_clf.predict_proba([t])[0] for t in texts])
        assert np.abs(probs - alone).max() < 1e-5
        perm = data.draw(st.permutations(range(len(texts))))
        shuffled = tiny_clf.predict_proba([texts[i] for i in perm], batch_size=batch_size)
        assert np.abs(shuffled - probs[list(perm)]).max() < 1e-5
        results = tiny_clf.predict(texts, batch_size=batch_size)
    assert [r["label"] for r in results] == [tiny_clf.labels[k] for k in probs.argmax(1)]
