"""Turn manifest rows into submit requests, checking every image before anything is paid for."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import fsspec
from pydantic import ValidationError

from flows.manifest import ManifestItem
from tasks.errors import ImageProblem
from tasks.images import MAX_IMAGE_BYTES, ImageInfo, inspect_image
from tasks.models import ModelSpec, describe_validation_error
from tasks.submit import ImageInput, SubmitRequest

if TYPE_CHECKING:
    from tasks.urlcheck import UrlCheck

# Reading images to hash them is I/O bound; keep a few in flight, not thousands.
PREPARE_CONCURRENCY = 8


@dataclass(frozen=True)
class PreparedItem:
    item: ManifestItem
    request: SubmitRequest
    # Per model input name; None for URLs passed through (WaveSpeed fetches those itself).
    images: Mapping[str, ImageInfo | None]
    # (field, message): image URLs that could not be checked (the item goes on).
    warnings: tuple[tuple[str, str], ...] = ()


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


def _image_input(
    field: str, source: str, is_url: bool, storage_options: Mapping[str, Any]
) -> tuple[ImageInput, ImageInfo | None] | str:
    """The checked, hashed image for one model input, or why it cannot be sent."""
    if is_url:
        return ImageInput(
            field=field, source=source, url=source, sha256=hashlib.sha256(source.encode()).hexdigest()
        ), None
    try:
        data, size = _read(source, storage_options)
    except FileNotFoundError:
        return f"file does not exist: {source}"
    except Exception as exc:  # any storage backend's error: reject this item, not the run
        return f"cannot read {source}: {type(exc).__name__}: {exc}"
    try:
        info = inspect_image(data, size=size)
    except ImageProblem as exc:
        return f"{exc}: {source}"
    image = ImageInput(
        field=field, source=source, sha256=hashlib.sha256(data).hexdigest(), content_type=info.content_type
    )
    return image, info


def _column(spec: ModelSpec, input_name: str) -> str:
    """The manifest column an image input comes from."""
    return "image" if input_name == spec.main_image_input else input_name


def prepare_item(
    item: ManifestItem,
    *,
    spec: ModelSpec,
    inputs: Mapping[str, Any],
    api_root: str,
    storage_options: Mapping[str, Any],
) -> PreparedItem | RejectedItem:
    """Blocking: validate the row's inputs for the model, read and check every image, hash them,
    build the content-keyed request. Row values override the flow-level ``inputs``."""
    values = {**inputs, **{k: v for k, v in item.fields.items() if k in spec.option_fields}}
    try:
        options = spec.validate_options(values)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        return RejectedItem(item, problems[0][0], "; ".join(f"{f}: {m}" if f else m for f, m in problems))

    # The manifest's `image` column feeds the model's main image input; other views come from
    # columns named like the model's inputs.
    sources: list[tuple[str, str, bool]] = []
    if spec.main_image_input is not None:
        sources.append((spec.main_image_input, item.image, item.is_url))
    for name, required in spec.image_inputs[1:]:
        if name in item.images:
            sources.append((name, *item.images[name]))
        elif required:
            return RejectedItem(item, name, f"is required by {spec.id} (a path or URL of that view)")
    images: list[ImageInput] = []
    infos: dict[str, ImageInfo | None] = {}
    for name, source, is_url in sources:
        checked = _image_input(name, source, is_url, storage_options)
        if isinstance(checked, str):
            return RejectedItem(item, _column(spec, name), checked)
        images.append(checked[0])
        infos[name] = checked[1]
    request = SubmitRequest(model=spec.id, inputs=options, images=images, api_root=api_root)
    return PreparedItem(item=item, request=request, images=infos)


async def prepare_items(
    items: list[ManifestItem],
    *,
    spec: ModelSpec,
    inputs: Mapping[str, Any],
    api_root: str,
    storage_options: Mapping[str, Any],
    check_image_urls: bool,
) -> list[PreparedItem | RejectedItem]:
    """:func:`prepare_item` for every item, a few at a time; then, with ``check_image_urls``, each
    distinct http(s) image URL is asked for its headers: one answering 4xx rejects its rows."""
    limit = asyncio.Semaphore(PREPARE_CONCURRENCY)

    async def one(item: ManifestItem) -> PreparedItem | RejectedItem:
        async with limit:
            return await asyncio.to_thread(
                prepare_item,
                item,
                spec=spec,
                inputs=inputs,
                api_root=api_root,
                storage_options=storage_options,
            )

    entries = list(await asyncio.gather(*(one(item) for item in items)))
    return await _check_image_urls(entries, spec) if check_image_urls else entries


async def _check_image_urls(
    entries: list[PreparedItem | RejectedItem], spec: ModelSpec
) -> list[PreparedItem | RejectedItem]:
    urls = [
        image.url
        for entry in entries
        if isinstance(entry, PreparedItem)
        for image in entry.request.images
        if image.url is not None
    ]
    if not urls:
        return entries
    from tasks.urlcheck import check_urls  # only for manifests with image URLs

    checks = await check_urls(urls)
    if not checks:
        return entries
    return [_judged(entry, checks, spec) if isinstance(entry, PreparedItem) else entry for entry in entries]


def _judged(
    entry: PreparedItem, checks: Mapping[str, UrlCheck], spec: ModelSpec
) -> PreparedItem | RejectedItem:
    """The item rejected when one of its image URLs answered 4xx, else with a warning for each that
    could not be checked."""
    warnings: list[tuple[str, str]] = []
    for image in entry.request.images:
        if image.url is None:
            continue
        check, column = checks[image.url], _column(spec, image.field)
        if check.rejected:
            return RejectedItem(entry.item, column, f"{image.url} answered HTTP {check.status}")
        if check.doubtful:
            warnings.append(
                (
                    column,
                    f"could not check {image.url} ({check.doubtful}); submitting it anyway, as WaveSpeed "
                    "may reach it (WAVESPEED_CHECK_IMAGE_URLS=false skips the check)",
                )
            )
    return replace(entry, warnings=tuple(warnings)) if warnings else entry
