"""Several runs in one process (gptclf.inference.group): runs of one base share one copy of it and
run the blocks they all froze once; every model's probabilities equal that run loaded alone.

The runs are made here, as training saves them (rundir.weights.weights_to_save), from a
4-block tiny GPT-2: the trained tensors are the base's plus seeded noise, so every run differs
from the base and from the others where it trained. Equal within 1e-5: the shared path does the
same fp32 arithmetic as the run alone (the trunk, then the tail: SequenceClassifier.forward in
two halves); only the rows batched together may differ, which moves a probability by ~1e-7."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from helpers import group_runs, make_run, tiny_gpt2_dir

from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier
from gptclf.inference.group import ModelGroup, parse_model_specs, shared_depth

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["win a free prize now", "see you at lunch", "", "URGENT call 0800 to claim",
         "ok " * 40, "are we still on for tomorrow?", "Free entry!!! txt WIN", "lol"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return group_runs(tmp_path_factory.mktemp("group"))


@pytest.fixture(scope="module")
def alone(runs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each run loaded alone, as today's single-model path loads it (no base cache)."""
    return {name: Classifier.load(d, device="cpu").predict_proba(TEXTS) for name, d in runs.items()}


@pytest.fixture(scope="module")
def group(runs: dict[str, Path]) -> ModelGroup:
    return ModelGroup.load(list(runs.items()), device="cpu")


def test_every_model_answers_as_it_does_alone(alone: dict[str, np.ndarray], group: ModelGroup) -> None:
    shared = group.predict_proba(TEXTS)
    for name, p in alone.items():
        assert np.abs(shared[name] - p).max() <= 1e-5, name
    assert np.abs(alone["one"] - alone["two"]).max() > 0.01  # the runs do differ


@pytest.mark.parametrize("pair", list(itertools.combinations(["one", "two", "head", "multi", "lora", "whole", "other"], 2)))
def test_every_pair_answers_as_each_alone(runs: dict[str, Path], alone: dict[str, np.ndarray],
                                         pair: tuple[str, str]) -> None:
    g = ModelGroup.load([(n, runs[n]) for n in pair], device="cpu")
    got = g.predict_proba(TEXTS)
    for name in pair:
        assert np.abs(got[name] - alone[name]).max() <= 1e-5, (pair, name)


def test_runs_of_one_base_share_it_and_the_blocks_they_froze(group: ModelGroup) -> None:
    m = group.models
    # The blocks both froze are the very same modules; those either trained are not.
    assert shared_depth(m["one"], m["two"]) == 2 and shared_depth(m["one"], m["head"]) == 3
    assert m["one"].model.backbone.tok_emb is m["lora"].model.backbone.tok_emb
    for name in ("lora", "whole", "other"):
        assert shared_depth(m["one"], m[name]) == 0, name
    trunks = {tuple(t.names): t.depth for t in group.trunks}
    assert trunks == {("one", "two", "head", "multi"): 2, ("lora",): 0, ("whole",): 0, ("other",): 0}
    assert group.bases == 2  # the shared base and the other one: the self-contained run needs none
    # What a run trained is its own: the first run's last block differs from the base's.
    assert m["one"].model.backbone.trf_blocks[3] is not m["head"].model.backbone.trf_blocks[3]


def test_loading_a_run_does_not_change_the_shared_base(runs: dict[str, Path]) -> None:
    g1 = ModelGroup.load([("head", runs["head"])], device="cpu")
    before = g1.predict_proba(TEXTS)["head"]
    g2 = ModelGroup.load([("head", runs["head"]), ("lora", runs["lora"]), ("one", runs["one"])], device="cpu")
    assert np.abs(g2.predict_proba(TEXTS, ["head"])["head"] - before).max() <= 1e-5


def test_a_text_asks_only_for_its_models(group: ModelGroup) -> None:
    rows = group.run([(TEXTS[0], {"one"}), (TEXTS[1], {"two", "lora"}), (TEXTS[3], set())])
    assert [sorted(r) for r in rows] == [["one"], ["lora", "two"], []]
    full = group.predict_proba(TEXTS[:2])
    assert np.abs(rows[1]["two"] - full["two"][1]).max() <= 1e-5


def test_a_run_whose_base_is_missing_is_refused_naming_it(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    base = tiny_gpt2_dir(tmp_path / "gone-base", n_layer=2, n_embd=32, n_head=2, n_positions=64)
    run = make_run(tmp_path / "orphan", base, "1", 8)
    shutil.rmtree(base)
    with pytest.raises(GptclfError) as e:
        ModelGroup.load([("one", runs["one"]), ("orphan", run)], device="cpu")
    assert "'orphan'" in e.value.message and "gone-base" in e.value.message


def test_model_specs() -> None:
    assert parse_model_specs(["spam=runs/a", "runs/topic"]) == [("spam", Path("runs/a")), ("topic", Path("runs/topic"))]
    assert parse_model_specs(["runs/my run (2)"]) == [("my-run-2", Path("runs/my run (2)"))]  # made a name
    with pytest.raises(GptclfError, match="twice"):
        parse_model_specs(["a=x", "a=y"])
