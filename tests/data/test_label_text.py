"""A label that cannot be written as UTF-8 (a lone surrogate, valid in JSON) is refused before
training, with the line it is on: not a UnicodeEncodeError when config.json is saved at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, train_args


def _data(path: Path, bad_label: object) -> Path:
    rows = [{"text": f"text number {i}", "label": ["ham", "spam"][i % 2]} for i in range(40)]
    if isinstance(bad_label, list):  # label sets: every row a list
        rows = [{**r, "label": [r["label"]]} for r in rows]
    rows[17]["label"] = bad_label
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # json escapes \ud800
    return path


@pytest.mark.parametrize("bad, extra", [("\ud800", ()), ("sp\udc00am", ()), (["ham", "\ud800"], ("--multi-label",))])
def test_lone_surrogate_label_refused_before_training(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                      micro_gpt2_config: Path, bad: object,
                                                      extra: tuple[str, ...]) -> None:
    data = _data(tmp_path / "d.jsonl", bad)
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, *train_args(micro_gpt2_config, data, out, *extra))
    assert code != 0
    assert "lone surrogate" in err and "line 18" in err and "Traceback" not in err
    assert "epoch" not in (stdout + err).lower()  # refused before any training
    assert not out.exists() and not list(tmp_path.glob(".run*")) and not list(tmp_path.glob("run.partial*"))


def test_a_valid_surrogate_pair_label_trains(capsys: pytest.CaptureFixture, tmp_path: Path,
                                             micro_gpt2_config: Path) -> None:
    data = _data(tmp_path / "d.jsonl", "\U0001F600")  # written as the pair \ud83d\ude00
    code, _, err = cli(capsys, *train_args(micro_gpt2_config, data, tmp_path / "run"))
    assert code == 0, err
    assert "\U0001F600" in json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["labels"]
