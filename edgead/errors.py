"""The one exception a user ever sees: what went wrong and what to do about it."""

from __future__ import annotations


class EdgeADError(Exception):
    """A user-caused problem, shown as one or two lines by the CLI (never a traceback).

    `message` says what is wrong; `hint` says what to do next.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
