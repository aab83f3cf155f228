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
