"""The ``gptclf`` command line: ``train``, ``tune``, ``audit``, ``predict``, ``evaluate``, ``serve``, ``export``, ``runs``.

Every option's help is the documentation; ``gptclf train`` with no options is the
book's chapter-6 run. User errors print one message and a hint, never a traceback.
Each command lives in its own module (``train.py``, ``predict.py``, ``serve.py``,
``export.py``, ``runs.py``) and imports what it needs only when it runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

from .. import __version__
from ..errors import GptclfError
from . import audit, export, predict, runs, serve, train, tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptclf",
        description="Fine-tune a pretrained decoder LLM into a text classifier (chapter 6 of "
                    "'Build a Large Language Model (From Scratch)').")
    parser.add_argument("--version", action="version", version=f"gptclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    tune.add_parser(sub)
    audit.add_parser(sub)
    predict.add_predict_parser(sub)
    predict.add_evaluate_parser(sub)
    serve.add_parser(sub)
    export.add_parser(sub)
    runs.add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    try:
        print(f"warning: {message}", file=sys.stderr)
    except (BrokenPipeError, ValueError):
        pass  # nobody reads stderr any more: a warning must not abort the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except GptclfError as e:
        print(f"gptclf: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gptclf predict ... | head`: the reader left; that's fine. Anywhere else (training's
        # own output is pipe-safe, see cli.train.PipeSafe) the command did not finish: say so.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0 if args.command in ("predict", "evaluate") else 1
    except OSError as e:
        # A file that cannot be read or written (permissions, a full disk): the system's
        # own message names the file, and there is nothing in gptclf to debug.
        print(f"gptclf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
