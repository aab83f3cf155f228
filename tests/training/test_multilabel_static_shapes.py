"""--multi-label on --static-shapes: the static step's binary cross-entropy gives the eager
path's losses and weights (the static loss is a second home of the step's loss formula)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from test_multilabel import keyword_rows
from test_static_shapes import _run, _same

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("balance", ["none", "weight"])
def test_multilabel_static_shapes_equal_the_eager_path(tmp_path: Path, tiny_gpt2: Path, balance: str) -> None:
    texts, labels = keyword_rows(120, seed=3)
    data = tmp_path / "tags.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, "|".join(labs)] for t, labs in zip(texts, labels))
    kw = {"multi_label": True, "balance": balance, "calibrate": False}
    eager = _run(tiny_gpt2, data, tmp_path / "eager", "off", **kw)
    static = _run(tiny_gpt2, data, tmp_path / "static", "on", **kw)
    _same(eager, static)
