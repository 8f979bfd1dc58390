"""Turn manifest rows into submit requests, checking every image before anything is paid for."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from flows.manifest import ManifestItem
from tasks.images import MAX_IMAGE_BYTES, ImageInfo, ImageProblem, inspect_image
from tasks.submit import ImageInput, SubmitRequest

# Reading images to hash them is I/O bound; keep a few in flight, not thousands.
PREPARE_CONCURRENCY = 8


@dataclass(frozen=True)
class PreparedItem:
    item: ManifestItem
    request: SubmitRequest
    image: ImageInfo | None  # None for URLs passed through (WaveSpeed fetches those itself)


@dataclass(frozen=True)
class RejectedItem:
    item: ManifestItem
    field: str
    message: str


def _read(path: str, storage_options: Mapping[str, Any]) -> tuple[bytes, int]:
    """The file's bytes and its size; a file over the limit is read no further than the limit (a
    huge file must not be loaded whole just to be refused)."""
    with fsspec.open(path, "rb", **dict(storage_options)) as handle:
        data: bytes = handle.read(MAX_IMAGE_BYTES + 1)
        size = len(data)
        if size > MAX_IMAGE_BYTES:
            # When the store cannot tell, report at least the bytes read.
            with contextlib.suppress(OSError, ValueError, TypeError):
                size = int(handle.seek(0, os.SEEK_END))
    return data, size


def prepare_item(
    item: ManifestItem,
    *,
    model: str,
    inputs: Mapping[str, Any],
    api_root: str,
    storage_options: Mapping[str, Any],
) -> PreparedItem | RejectedItem:
    """Blocking: read and check the image, hash it, build the content-keyed request."""
    if item.is_url:
        image = ImageInput(
            field="image",
            source=item.image,
            url=item.image,
            sha256=hashlib.sha256(item.image.encode()).hexdigest(),
        )
        info = None
    else:
        try:
            data, size = _read(item.image, storage_options)
        except FileNotFoundError:
            return RejectedItem(item, "image", f"file does not exist: {item.image}")
        except Exception as exc:  # any storage backend's error: reject this item, not the run
            return RejectedItem(item, "image", f"cannot read {item.image}: {type(exc).__name__}: {exc}")
        try:
            info = inspect_image(data, size=size)
        except ImageProblem as exc:
            return RejectedItem(item, "image", f"{exc}: {item.image}")
        image = ImageInput(
            field="image",
            source=item.image,
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=info.content_type,
        )
    request = SubmitRequest(model=model, inputs=dict(inputs), images=[image], api_root=api_root)
    return PreparedItem(item=item, request=request, image=info)


async def prepare_items(
    items: list[ManifestItem],
    *,
    model: str,
    inputs: Mapping[str, Any],
    api_root: str,
    storage_options: Mapping[str, Any],
) -> list[PreparedItem | RejectedItem]:
    limit = asyncio.Semaphore(PREPARE_CONCURRENCY)

    async def one(item: ManifestItem) -> PreparedItem | RejectedItem:
        async with limit:
            return await asyncio.to_thread(
                prepare_item,
                item,
                model=model,
                inputs=inputs,
                api_root=api_root,
                storage_options=storage_options,
            )

    return list(await asyncio.gather(*(one(item) for item in items)))
