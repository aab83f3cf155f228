"""A property-based fuzz of command-line arguments. Every command
gets random options with hostile values (negative, huge, inf/nan, empty, text where a
number goes); the only outcomes allowed are argparse's usage error (exit 2) or a
GptclfError printed as one line (``main`` returns 2) -- never a traceback.

Training itself is replaced by the validation it starts with (``TrainConfig.resolved``),
and the model paths do not exist, so no example trains or loads anything heavy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gptclf.cli import build_parser, main

from helpers import examples


class Validated(Exception):
    pass


def _options(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "inf", "-inf", "nan", "1e400", "1e-400", "", " ", "99999999999999999999",
                     "0x10", "1_000", "3.5", "-0", "True", "none", "cpu", "cuda:99", "../..", "/dev/zero",
                     "last", "lora", "all", "cosine", "val_loss", "sms-spam", "\u00e9", "65536", "-65536"]),
    st.integers(-(2**66), 2**66).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12).filter(lambda s: "\0" not in s),
)


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["train", "predict", "evaluate", "serve", "export"]))
    out = [command]
    if command == "export":
        out += ["no-such-run", "no-such-out"]
    actions = _options(command)
    for action in draw(st.lists(st.sampled_from(actions), max_size=5, unique_by=lambda a: a.dest)):
        flag = action.option_strings[-1]
        if action.nargs == 0:
            out.append(flag)
        elif action.dest in ("model", "resume"):
            out += [flag, "no-such-model-dir"]
        elif action.dest in ("input", "output", "data", "report", "out"):
            out += [flag, draw(st.sampled_from(["no-such-file.csv", "", "/dev/zero", "sms-spam"]))]
        else:
            out += [flag, draw(VALUES)]
    if command in ("predict", "evaluate", "serve") and "--model" not in out:
        out += ["--model", "no-such-model-dir"]
    return out


@pytest.fixture
def contained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gptclf.training.recipe as recipe

    def validate_only(cfg, *a, **k):  # noqa: ANN001, ANN002, ANN003
        cfg.resolved()
        raise Validated

    monkeypatch.setattr(recipe, "run_training", validate_only)
    monkeypatch.chdir(tmp_path)  # any relative path a run would write lands here


@settings(max_examples=examples(300), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=argv())
def test_no_argument_gets_a_traceback(contained: None, args: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as e:  # argparse: a usage error
            code = e.code
        except Validated:
            return
    assert code == 2, (args, err.getvalue())
    assert "Traceback" not in err.getvalue()
