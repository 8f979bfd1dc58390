"""In-memory state: predictions, uploaded media and generated outputs. Touched only on the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"completed", "failed"})


def rfc3339_ns(epoch_ns: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds and a `Z`, e.g. 2025-01-02T03:04:05.123456789Z."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    base_url: str
    """Scheme://host:port of the submit request, without trailing slash; output URLs start with it."""
    get_url: str
    input_key: str
    own_netloc: str
    """host:port the submit came in on: image URLs there under /cdn/media/ are read from memory."""
    base64_output: bool = False
    webhook: str | None = None
    """Where the terminal prediction is delivered (submit `?webhook=` or body `webhook_url`)."""
    status: str = "created"
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int = 0
    execution_ms: int = 0
    inference_ms: int = 0
    created_at: str = field(default_factory=lambda: rfc3339_ns(time.time_ns()))
    created_mono: float = field(default_factory=time.monotonic)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "input": self.input,
            "outputs": list(self.outputs),
            "urls": {"get": self.get_url},
            "has_nsfw_contents": [False] * len(self.outputs),
            "status": self.status,
            "created_at": self.created_at,
            "error": self.error,
            "code": self.code,
            "executionTime": self.execution_ms,
            "timings": {"inference": self.inference_ms},
        }


@dataclass
class Blob:
    data: bytes
    content_type: str
    created_mono: float = field(default_factory=time.monotonic)


@dataclass
class PendingUpload:
    """A presigned-PUT upload that was announced but not yet (or already) PUT."""

    key: str
    size: int
    content_type: str


class Store:
    def __init__(self) -> None:
        self.predictions: dict[str, Prediction] = {}
        self.media: dict[str, Blob] = {}
        self.pending_uploads: dict[str, PendingUpload] = {}
        """token -> upload slot."""
        self.outputs: dict[str, Blob] = {}

    def clear(self) -> None:
        self.predictions.clear()
        self.media.clear()
        self.pending_uploads.clear()
        self.outputs.clear()

    @staticmethod
    def _alive(created_mono: float, retention_s: float | None) -> bool:
        return retention_s is None or time.monotonic() - created_mono <= retention_s

    def prediction(self, pid: str, retention_s: float | None) -> Prediction | None:
        found = self.predictions.get(pid)
        return found if found is not None and self._alive(found.created_mono, retention_s) else None

    def media_blob(self, key: str, retention_s: float | None) -> Blob | None:
        found = self.media.get(key)
        return found if found is not None and self._alive(found.created_mono, retention_s) else None

    def output_blob(self, name: str, retention_s: float | None) -> Blob | None:
        found = self.outputs.get(name)
        return found if found is not None and self._alive(found.created_mono, retention_s) else None
