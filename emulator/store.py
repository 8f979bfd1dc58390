"""In-memory state: predictions, uploaded media and generated outputs. Touched only on the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout"})


def rfc3339_ns(epoch_ns: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds and a `Z`, e.g. 2025-01-02T03:04:05.123456789Z."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def new_id() -> str:
    return uuid.uuid4().hex


def new_output_name(extension: str) -> str:
    """A fresh CDN name for an output: `<uuid><extension>` (the realistic profile uses no extension)."""
    return f"{uuid.uuid4()}{extension}" if extension else uuid.uuid4().hex


@dataclass
class PublishedFile:
    """One output of a completed prediction: where the CDN serves it, or its base64 text."""

    name: str
    """Key in Store.outputs ("" for base64 output); a new one when the links expire and are renewed."""
    extension: str
    """Extension of the names it is published under ("" in the realistic profile)."""
    media_type: str
    """What the file is (image/png, model/gltf-binary, application/zip, model/obj)."""
    format: str
    size: int
    is_mesh: bool
    inline: str | None = None
    """The file as base64 (`enable_base64_output`): answered instead of a URL."""


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
    realistic: bool = False
    """Submitted under the realistic profile: answered in its shapes for its whole life."""
    status: str = "created"
    files: list[PublishedFile] = field(default_factory=list)
    links_expire: bool = False
    """Drawn at completion (`download_403_rate`): the links handed out so far have expired."""
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

    @property
    def outputs(self) -> list[str]:
        """The default profile's `outputs`: unsigned CDN URLs (or base64 strings)."""
        return [
            f.inline if f.inline is not None else f"{self.base_url}/cdn/output/{f.name}" for f in self.files
        ]


@dataclass
class Blob:
    data: bytes
    content_type: str
    """The Content-Type it is served with."""
    owner: str = ""
    """Id of the prediction whose output it is ("" for uploads)."""
    created_mono: float = field(default_factory=time.monotonic)


@dataclass
class PendingUpload:
    """A presigned-PUT upload that was announced but not yet (or already) PUT."""

    key: str
    size: int
    content_type: str
    """What the upload is stored (and served) as."""
    signed_headers: dict[str, str]
    """The headers the PUT must send exactly (`upload.headers`): `Content-Type`, or in the realistic
    profile `If-None-Match: *` (which also refuses to overwrite a stored upload: 412)."""


class Store:
    def __init__(self) -> None:
        self.predictions: dict[str, Prediction] = {}
        self.media: dict[str, Blob] = {}
        self.pending_uploads: dict[str, PendingUpload] = {}
        """token -> upload slot."""
        self.outputs: dict[str, Blob] = {}
        """CDN name -> output file; renewed links are further names of the same Blob."""
        self.expired_outputs: set[str] = set()
        """Names whose links expired (`download_403_rate`): answered 403."""

    def clear(self) -> None:
        self.predictions.clear()
        self.media.clear()
        self.pending_uploads.clear()
        self.outputs.clear()
        self.expired_outputs.clear()

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
