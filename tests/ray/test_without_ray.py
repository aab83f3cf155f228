"""The core package never imports Ray; without it, --engine ray says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gptclf.cli import main


def test_the_core_package_does_not_import_ray() -> None:
    code = ("import sys, gptclf, gptclf.cli, gptclf.inference.batch_files, gptclf.training.recipe; "
            "from gptclf.cli import build_parser; build_parser(); assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command", [["predict", "--input", "in.csv", "--output", "out"], ["train"]])
def test_engine_ray_without_ray_says_how_to_install_it(command: list[str], monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray" in err and "pip install 'gptclf[ray]'" in err and "Traceback" not in err
