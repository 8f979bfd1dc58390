"""Keep secrets out of everything stored or printed.

The client never sends the API key anywhere but the API, yet a server may echo it back (an error
text quoting ``Bearer <key>``), and from there it would reach metadata, summaries, the gallery, logs
and the Prefect database. Every secret the process holds is registered here when it is loaded, and
text that comes from a server is redacted before anything keeps it.
"""

from __future__ import annotations

import logging
from typing import Any

MASK = "***"
_MIN_LENGTH = 6  # shorter values would mask ordinary words; no real key is that short

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    if value and len(value.strip()) >= _MIN_LENGTH:
        _secrets.add(value.strip())


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):  # a key that starts another is masked after it
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """``value`` with every string in it (keys and nested values too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message once it is formatted (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_FILTER = RedactingFilter()


def redact_logs(*loggers: logging.Logger) -> None:
    """Put the filter on every handler of ``loggers`` (the root logger and Prefect's by default):
    a filter on a handler sees the records of every child logger, a filter on a logger does not."""
    for logger in loggers or (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
