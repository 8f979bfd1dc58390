"""Stream an output URL into a local file, hashing as it goes: a mesh is never held whole in memory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import httpx

from tasks.client import WaveSpeedClient
from tasks.errors import DownloadError, IncompleteDownloadError

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DownloadedFile:
    url: str
    path: str
    size: int
    sha256: str
    content_type: str | None = None


async def download_to_file(client: WaveSpeedClient, url: str, path: str, *, max_bytes: int) -> DownloadedFile:
    digest = hashlib.sha256()
    size = 0
    async with client.stream_output(url) as response:
        content_type = response.headers.get("content-type")
        announced = response.headers.get("content-length")
        expected = int(announced) if announced and announced.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise DownloadError(f"output is {expected} bytes, over the {max_bytes}-byte cap")
        try:
            with open(path, "wb") as handle:
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(f"output exceeds the {max_bytes}-byte cap")
                    digest.update(chunk)
                    handle.write(chunk)
        except httpx.HTTPError as exc:
            raise IncompleteDownloadError(
                f"download interrupted after {size} bytes: {type(exc).__name__}: {exc}"
            ) from exc
    if expected is not None and size != expected:
        raise IncompleteDownloadError(f"received {size} of {expected} announced bytes")
    return DownloadedFile(url, path, size, digest.hexdigest(), content_type)
