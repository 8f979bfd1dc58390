"""The prediction resource as the API returns it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Statuses after which a prediction never changes. The official SDK treats the last three as
# terminal too; anything unknown means "keep waiting".
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})

# Task error codes (data.code) after which a new submit of the same input may succeed.
TRANSIENT_TASK_CODES = frozenset({5000, 5003, 5004})


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?")


def rfc3339_to_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (any number of fraction digits; no
    zone means UTC), or None when it is not one. ``datetime`` alone keeps only microseconds, too
    coarse to order predictions accepted in the same microsecond burst."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone is None or zone in "Zz" else f"{zone[:3]}:{zone[-2:]}"
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError:
        return None
    whole_seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return whole_seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


class Prediction(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str
    model: str = ""
    status: str
    outputs: list[str] = Field(default_factory=list)
    error: str = ""
    code: int = 0
    created_at: str | None = None
    execution_time_ms: float | None = Field(default=None, alias="executionTime")
    timings: dict[str, Any] = Field(default_factory=dict)
    has_nsfw_contents: list[bool] = Field(default_factory=list)

    @field_validator("error", mode="before")
    @classmethod
    def _none_to_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("code", mode="before")
    @classmethod
    def _none_to_zero(cls, value: Any) -> Any:
        return 0 if value is None else value

    @property
    def created_ns(self) -> int | None:
        """When the server accepted it (ns since the epoch), if it said so readably."""
        return rfc3339_to_ns(self.created_at) if self.created_at else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @property
    def inference_ms(self) -> float | None:
        value = self.timings.get("inference")
        return float(value) if isinstance(value, int | float) else None

    def output_by_extension(self, *extensions: str) -> str | None:
        """The first output URL whose path ends with one of ``extensions`` (v3 models return several)."""
        for url in self.outputs:
            path = url.split("?", 1)[0].lower()
            if any(path.endswith(ext) for ext in extensions):
                return url
        return None
