"""What a user ever sees: one message that says what went wrong and what to do, and never a secret.

Passwords and tokens reach messages by many roads (a URL in a connection error, a config value quoted
in a validation message, a library's log line), so redaction is done once, where text leaves the
program: every EdgeADError and every log record passes through `redact_text`, which knows the secrets
the config resolved (`register_secret`) and the password part of any URL.
"""

from __future__ import annotations

import logging
import re

REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*):[^/@\s]*@", re.IGNORECASE)
_SECRETS: set[str] = set()
MIN_SECRET_LEN = 4       # shorter values would redact ordinary words; such a secret is weak anyway


def register_secret(value: str | None) -> None:
    """A password or token the config resolved: from now on it is written as *** wherever it appears."""
    if value and len(value) >= MIN_SECRET_LEN:
        _SECRETS.add(value)


def redact_text(text: str) -> str:
    """`text` with a URL's password (`mqtt://user:pw@host` -> `mqtt://user:***@host`) and every registered
    secret written as ***."""
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Installed on the CLI's log handler: a log line never carries a secret, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class EdgeADError(Exception):
    """A user-caused problem, shown as one or two lines by the CLI (never a traceback).

    `message` says what is wrong; `hint` says what to do next. Both are redacted.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        message, hint = redact_text(message), redact_text(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
