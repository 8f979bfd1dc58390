"""The prediction resource as the API returns it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.redact import redact, redact_data

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


# Keys under which an output given as an object carries its URL (WaveSpeed's CLI and MCP server type
# outputs as ``string | Record<string, unknown>``; see docs/wavespeed-api.md).
OUTPUT_URL_KEYS = ("url", "uri", "href", "download_url", "file_url", "output_url")


def output_url(output: Any) -> str | None:
    """The URL of one ``outputs`` item: the string itself, or the URL an object carries."""
    if isinstance(output, str):
        return output.strip() or None
    if isinstance(output, dict):
        for key in OUTPUT_URL_KEYS:
            value = output.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _liberal(data: Any) -> Any:
    """Read an answer as the public clients do (``?? []``): a field that is null, or not of the
    documented type, counts as absent. Only a missing ``id`` makes an answer unusable."""
    if not isinstance(data, dict):
        return data
    clean = dict(data)
    if isinstance(clean.get("id"), int) and not isinstance(clean.get("id"), bool):
        clean["id"] = str(clean["id"])
    raw_outputs = clean.get("outputs")
    items = raw_outputs if isinstance(raw_outputs, list) else []
    clean["outputs"] = [url for url in map(output_url, items) if url]
    clean["output_objects"] = [redact_data(item) for item in items if isinstance(item, dict)]
    expected: dict[str, tuple[type, ...]] = {
        "model": (str,),
        "status": (str,),
        "error": (str,),
        "code": (int, str),
        "created_at": (str,),
        "executionTime": (int, float, str),
        "timings": (dict,),
        "has_nsfw_contents": (list,),
    }
    for key, types in expected.items():
        value = clean.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            clean.pop(key, None)
    if isinstance(data.get("error"), dict):  # {"message": ...} instead of a string
        clean["error"] = str(data["error"].get("message") or data["error"])
    if "error" in clean:
        clean["error"] = redact(clean["error"])  # a server may echo the request, key included
    for key in ("code", "executionTime"):
        if isinstance(clean.get(key), str):
            try:
                clean[key] = float(clean[key]) if key == "executionTime" else int(clean[key])
            except ValueError:
                clean.pop(key)
    if "status" in clean:
        clean["status"] = clean["status"].strip().lower()
    if "has_nsfw_contents" in clean:
        clean["has_nsfw_contents"] = [bool(flag) for flag in clean["has_nsfw_contents"]]
    return clean


class Prediction(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str = Field(min_length=1)
    model: str = ""
    # "" when the answer gave none: not terminal, so a wait goes on polling.
    status: str = ""
    outputs: list[str] = Field(default_factory=list, description="The output URLs, in the server's order.")
    output_objects: list[dict[str, Any]] = Field(
        default_factory=list, description="Outputs the server gave as objects, kept as they were."
    )
    error: str = ""
    code: int = 0
    created_at: str | None = None
    execution_time_ms: float | None = Field(default=None, alias="executionTime")
    timings: dict[str, Any] = Field(default_factory=dict)
    has_nsfw_contents: list[bool] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _accept_variants(cls, data: Any) -> Any:
        return _liberal(data)

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
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
