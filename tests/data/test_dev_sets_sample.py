"""scripts/dev_sets.py --tweets-sample: the seeded sample that docs/accuracy.md's tweets-small rows used."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from helpers import SCRIPTS

SCRIPT = SCRIPTS / "dev_sets.py"


def _dev_sets():
    spec = importlib.util.spec_from_file_location("dev_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_split(folder: Path, name: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": f"{name} text {i}", "label": "positive" if i % 3 else "negative"})
             for i in range(n)]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_sample_is_seeded_a_subset_and_capped(tmp_path: Path) -> None:
    dev_sets = _dev_sets()
    source = tmp_path / "full"
    full = {name: _write_split(source, name, n) for name, n in (("train", 50), ("val", 20), ("test", 30))}
    sizes = {"train": 10, "val": 5, "test": 100}  # more test rows asked than there are: all of them
    dev_sets.write_sample(source, tmp_path / "a", sizes)
    dev_sets.write_sample(source, tmp_path / "b", sizes)
    dev_sets.write_sample(source, tmp_path / "c", sizes, seed=7)
    for name, want in (("train", 10), ("val", 5), ("test", 30)):
        got = (tmp_path / "a" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(got) == want and len(set(got)) == want
        assert set(got) <= set(full[name])
        assert got == (tmp_path / "b" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    other = (tmp_path / "c" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert other != (tmp_path / "a" / "train.jsonl").read_text(encoding="utf-8").splitlines()
