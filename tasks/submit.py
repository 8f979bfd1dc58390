"""The ``submit`` task: upload local images, then create a prediction — at most once per content.

The cache key is the content (image sha256 + model + inputs) and the API root that the prediction
lives on, not the file name or item id, so the same image is never paid for twice: not under two
ids, not in a re-run, not from another process sharing the result storage. Cache records expire
with WaveSpeed's 7-day retention.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import fsspec
from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict, Field

from tasks.client import WaveSpeedClient
from tasks.errors import ImageChangedError, SubmitOutcomeUnknownError, WaveSpeedError
from tasks.images import EXTENSIONS
from tasks.ledger import RETENTION, PredictionLedger
from tasks.limits import SubmitThrottle

logger = logging.getLogger("hy3d.submit")


class ImageInput(BaseModel):
    """One image-valued model input: an http(s) URL passed through, or local bytes to upload."""

    model_config = ConfigDict(frozen=True)

    field: str = Field(description="Model input name, e.g. 'image' or 'back_image'.")
    source: str = Field(description="Where it came from (URL or storage path), for metadata.")
    url: str | None = Field(default=None, description="Set when the manifest gave an http(s) URL.")
    sha256: str = Field(description="Of the bytes, or of the URL when passed through.")
    content_type: str = "application/octet-stream"
    data: bytes | None = Field(default=None, repr=False, exclude=True)


class SubmitRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    inputs: dict[str, Any] = Field(default_factory=dict, description="Non-image inputs.")
    images: list[ImageInput] = Field(default_factory=list)
    api_root: str = Field(description="A prediction id only means something on the API that made it.")

    def _key(self, **extra: str) -> str:
        canonical = json.dumps(
            {
                **extra,
                "model": self.model,
                "inputs": self.inputs,
                "images": {image.field: image.sha256 for image in self.images},
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return "hy3d-submit-" + hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def content_key(self) -> str:
        """The work itself (model, inputs, image hashes): what decides that a mesh is already done,
        whichever API root (a proxy, another port) made it."""
        return self._key()

    @property
    def cache_key(self) -> str:
        """Where the submit cache keeps this work's prediction: a prediction id only means something
        on the API root that made it."""
        return self._key(api=self.api_root.rstrip("/"))


class SubmittedPrediction(BaseModel):
    prediction_id: str
    model: str
    content_key: str
    inputs: dict[str, Any] = Field(description="What was sent, image fields as URLs.")
    submitted_at: str


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    request: SubmitRequest = parameters["request"]
    return request.cache_key


def read_image_bytes(image: ImageInput, storage_options: Mapping[str, Any] | None) -> bytes:
    if image.data is not None:
        return image.data
    with fsspec.open(image.source, "rb", **dict(storage_options or {})) as handle:
        data: bytes = handle.read()
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise ImageChangedError(f"{image.source} changed since it was validated; run again")
    return data


async def upload_images(
    client: WaveSpeedClient, images: list[ImageInput], storage_options: Mapping[str, Any] | None
) -> dict[str, str]:
    """Model input name -> URL: manifest URLs pass through, local files are uploaded."""
    urls: dict[str, str] = {}
    for image in images:
        if image.url is not None:
            urls[image.field] = image.url
            continue
        data = await asyncio.to_thread(read_image_bytes, image, storage_options)
        filename = f"{image.sha256[:16]}{EXTENSIONS.get(image.content_type, '')}"
        urls[image.field] = await client.upload(data, filename, image.content_type)
    return urls


async def _record(ledger: PredictionLedger, write: Callable[..., object], *args: Any) -> None:
    try:
        await ledger.storage.small_io(write, *args)
    except Exception as exc:  # the storage failing must not lose the prediction id we hold
        logger.error("could not record the submit in the output's ledger: %s: %s", type(exc).__name__, exc)


async def submit_prediction(
    client: WaveSpeedClient,
    request: SubmitRequest,
    storage_options: Mapping[str, Any] | None = None,
    ledger: PredictionLedger | None = None,
    throttle: SubmitThrottle | None = None,
) -> SubmittedPrediction:
    """Upload, then one submit (see WaveSpeedClient.submit); the coroutine of the task :data:`submit`.

    Images without bytes are read from ``source`` (with ``storage_options``) only on a cache miss.
    With a ``ledger``, the accepted prediction id is recorded in the output storage at once."""
    image_urls = await upload_images(client, request.images, storage_options)
    inputs = {**request.inputs, **image_urls}
    if throttle is not None:
        await throttle.acquire(request.content_key)  # budget, submits per minute; a cache hit never gets here
    if ledger is not None:
        # Write-ahead: if we die with the request in flight, the next run knows it may be billed.
        # Failing to record means not submitting: better unpaid than untracked.
        await ledger.storage.small_io(
            ledger.record_intent, request.content_key, request.model, request.api_root
        )
    try:
        prediction = await client.submit(request.model, inputs)
    except SubmitOutcomeUnknownError as exc:
        if ledger is not None:
            # So that a re-run does not resend it blindly either.
            await _record(
                ledger,
                ledger.record_unknown,
                request.content_key,
                request.model,
                request.api_root,
                exc.reason,
            )
        raise
    except WaveSpeedError:
        if throttle is not None:
            throttle.refund(request.content_key)
        if ledger is not None:
            # Every other client error means refused or never sent: certainly not billed. (A
            # cancellation leaves the intent in place: the request may have gone out.)
            await _record(ledger, ledger.forget, request.content_key)
        raise
    if ledger is not None:
        # Paid for: remember it next to the output before anything else can go wrong.
        await _record(
            ledger,
            ledger.record_submitted,
            request.content_key,
            prediction.id,
            request.model,
            request.api_root,
            inputs,
        )
    return SubmittedPrediction(
        prediction_id=prediction.id,
        model=request.model,
        content_key=request.content_key,
        inputs=inputs,
        submitted_at=datetime.now(UTC).isoformat(),
    )


submit = task(
    name="submit",
    cache_key_fn=_cache_key,
    cache_expiration=RETENTION,
    persist_result=True,
    result_serializer="json",
    # Resending is decided inside the client: only when the server certainly did not accept it.
    retries=0,
)(submit_prediction)
