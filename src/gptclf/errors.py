"""What a user can get wrong, and what they should know about.

The CLI catches :class:`GptclfError` and prints its message (and hint) without a
traceback; anything else is a bug and keeps its traceback. :class:`DataWarning` is the
category of every warning about the user's data (truncated texts, dropped rows,
leakage); the CLI prints those as one ``warning:`` line each.
"""

from __future__ import annotations

import warnings


class GptclfError(Exception):
    """An error the user can fix: the message says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class DataWarning(UserWarning):
    """Something in the data the user should know about (truncation, dropped rows, leakage)."""


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


class TextError(GptclfError):
    """Some texts of a batch could not be tokenized or scored; the others could.

    ``reasons`` maps each failing text's index (in the batch given) to a short reason that
    never quotes the text, so a server can answer for that text alone and a file
    prediction can name the row.
    """

    def __init__(self, reasons: dict[int, str]) -> None:
        self.reasons = dict(sorted(reasons.items()))
        shown = "; ".join(f"text {i}: {r}" for i, r in list(self.reasons.items())[:5])
        more = f" (and {len(self.reasons) - 5} more)" if len(self.reasons) > 5 else ""
        super().__init__(f"{len(self.reasons)} text(s) could not be classified: {shown}{more}",
                         hint="check those texts; a model whose every score is non-finite has "
                              "corrupt or diverged weights (retrain it)")


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C and interpreter exit must propagate; any other failure (a tokenizer's Rust
    panic is a BaseException too) is the input's or the model's, and is reported."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))
