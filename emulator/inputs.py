"""Fetching and checking the input images of a prediction (task error codes 1402 and 1401)."""

from __future__ import annotations

import base64
import binascii
import io
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from emulator.config import EmulatorConfig
from emulator.store import Store

MEDIA_PREFIX = "/cdn/media/"
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


class TaskFailure(Exception):
    """Ends a prediction as `failed` (or another terminal `status`) with a task error code."""

    def __init__(self, code: int, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def own_media_key(url: str, own_netloc: str) -> str | None:
    """The media key when `url` is one of this emulator's uploads (same host:port, /cdn/media/...)."""
    parts = urlsplit(url)
    if (
        parts.scheme in ("http", "https")
        and parts.netloc == own_netloc
        and parts.path.startswith(MEDIA_PREFIX)
    ):
        return parts.path[len(MEDIA_PREFIX) :]
    return None


def _cannot_download(field: str, url: str, reason: str) -> TaskFailure:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return TaskFailure(1402, f"Cannot download the input URL for '{field}' ({shown}): {reason}")


def decode_data_uri(field: str, url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise _cannot_download(field, url, "malformed data URI")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise _cannot_download(field, url, f"malformed data URI ({exc})") from exc


async def download(
    field: str, url: str, own_netloc: str, store: Store, http: httpx.AsyncClient, config: EmulatorConfig
) -> bytes:
    """The bytes behind an input URL: own uploads from memory, data URIs decoded, others over HTTP."""
    if url.startswith("data:"):
        return decode_data_uri(field, url)
    key = own_media_key(url, own_netloc)
    if key is not None:
        blob = store.media_blob(key, config.retention_s)
        if blob is None:
            raise _cannot_download(field, url, "HTTP 404")
        return blob.data
    try:
        response = await http.get(url, timeout=config.image_fetch_timeout_s)
    except httpx.HTTPError as exc:
        raise _cannot_download(field, url, type(exc).__name__) from exc
    if response.status_code != 200:
        raise _cannot_download(field, url, f"HTTP {response.status_code}")
    return response.content


def check_image(field: str, url: str, data: bytes, config: EmulatorConfig) -> None:
    """Not an image -> 1402 (the download did not yield an image); wrong format/size -> 1401."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise _cannot_download(field, url, "the content is not an image") from exc
    if image_format not in ALLOWED_FORMATS:
        raise TaskFailure(
            1401, f"Invalid parameter '{field}': image format {image_format} (use JPG/PNG/WEBP)"
        )
    if len(data) > config.max_image_bytes:
        raise TaskFailure(
            1401, f"Invalid parameter '{field}': image larger than {config.max_image_bytes} bytes"
        )
    if min(width, height) < config.min_image_px or max(width, height) > config.max_image_px:
        raise TaskFailure(
            1401,
            f"Invalid parameter '{field}': image is {width}x{height} px, "
            f"sides must be {config.min_image_px}-{config.max_image_px} px",
        )
