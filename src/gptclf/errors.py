"""One exception type for everything a user can get wrong.

The CLI catches :class:`GptclfError` and prints its message (and hint) without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GptclfError(Exception):
    """An error the user can fix: the message says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
