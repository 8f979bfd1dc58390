"""The ``submit`` task: upload local images, then create a prediction — at most once per content.

The cache key is the content (image sha256 + model + inputs) and the API root that the prediction
lives on, not the file name or item id, so the same image is never paid for twice: not under two
ids, not in a re-run, not from another process sharing the result storage. Cache records expire
with WaveSpeed's 7-day retention.

Sections: limits (in flight, submits per minute, the budget), then the submit task and its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast

import fsspec
from prefect import Task, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from pydantic import BaseModel, ConfigDict, Field

from tasks.client import WaveSpeedClient
from tasks.errors import (
    BudgetExceededError,
    ImageChangedError,
    SubmitOutcomeUnknownError,
    SubmitsStoppedError,
    WaveSpeedError,
)
from tasks.models import EXTENSIONS
from tasks.storage import RETENTION, PredictionLedger, small_io

# ==== Limits ======================================================================================
#
# Limits on what we ask of WaveSpeed: predictions in flight, and submits per minute.
#
# In one process an asyncio semaphore / sliding window does the job; across runs and workers the
# same limits are Prefect global concurrency limits, named by the caller (they need a Prefect server,
# which every flow run has: a real one or the temporary one).

limits_logger = logging.getLogger("hy3d.limits")

WINDOW_S = 60.0

# Predictions submitted beyond the account's concurrency, as a share of it, when the caller does not
# say. WaveSpeed queues them and starts one the moment a slot frees, so the account stays busy while
# we notice a completion, download it and submit the next item. Half is what brought the measured
# rate to the account's ceiling of C/L (docs/performance.md, "Queue headroom").
AUTO_QUEUE_HEADROOM = 0.5


def queue_headroom_for(concurrency: int, requested: int | None) -> int:
    """How many predictions a run keeps queued on WaveSpeed beyond ``concurrency`` (None: auto)."""
    if requested is not None:
        return requested
    return math.ceil(concurrency * AUTO_QUEUE_HEADROOM)


class SubmitRateLimiter:
    """At most ``per_minute`` submits in any 60-second window (WaveSpeed counts submits per minute)."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError("submits per minute must be at least 1")
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                while self._sent and now - self._sent[0] >= WINDOW_S:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return
                await self._sleep(self._sent[0] + WINDOW_S - now)


class Budget:
    """Running total of what this run pays; refuses a submit that would pass the cap."""

    def __init__(self, max_cost: float | None, prices: dict[str, float | None]) -> None:
        self.max_cost = max_cost
        self.prices = prices
        self.spent = 0.0

    def charge(self, content_key: str) -> float | None:
        price = self.prices.get(content_key)
        if self.max_cost is not None:
            if price is None:
                raise BudgetExceededError("the price of this item is unknown, so the cost cap cannot be kept")
            if self.spent + price > self.max_cost + 1e-9:
                raise BudgetExceededError(
                    f"submitting it (${price:.4f}) would take this run to ${self.spent + price:.4f}, "
                    f"over max_cost ${self.max_cost:.4f}"
                )
        self.spent += price or 0.0
        return price

    def refund(self, content_key: str) -> None:
        """The submit was certainly not accepted (so not billed)."""
        self.spent -= self.prices.get(content_key) or 0.0


class SubmitThrottle:
    """What the submit task calls right before sending (never on a cache hit): the budget, the
    local per-minute window, then Prefect's shared rate limit when a name is given. Once
    :meth:`close` is called no submit passes, not even one already waiting for its turn."""

    def __init__(
        self, per_minute: int | None, shared_limit: str | None, budget: Budget | None = None
    ) -> None:
        self.local = SubmitRateLimiter(per_minute) if per_minute else None
        self.shared_limit = shared_limit
        self.budget = budget
        self.closed_reason: str | None = None
        self._closed = asyncio.Event()

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._closed.set()

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise SubmitsStoppedError(self.closed_reason)

    async def acquire(self, content_key: str) -> None:
        self._check_open()
        if self.budget is not None:
            self.budget.charge(content_key)
        try:
            if self.local is not None:
                await self._unless_closed(self.local.acquire())
            if self.shared_limit:
                await self._unless_closed(rate_limit(self.shared_limit))
            self._check_open()
        except SubmitsStoppedError:
            self.refund(content_key)
            raise

    async def _unless_closed(self, turn: Awaitable[None]) -> None:
        """Wait for ``turn``, or give it up when the throttle is closed meanwhile."""
        waiting = asyncio.ensure_future(turn)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({waiting, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not waiting.done():
                waiting.cancel()
        if waiting.done() and not waiting.cancelled():
            waiting.result()
        self._check_open()

    def refund(self, content_key: str) -> None:
        if self.budget is not None:
            self.budget.refund(content_key)


def in_flight_slot(limit_name: str | None) -> AbstractAsyncContextManager[object]:
    """Hold one slot of the named global concurrency limit for a prediction's whole life."""
    if not limit_name:
        return nullcontext()
    return _held(limit_name)


@asynccontextmanager
async def _held(limit_name: str) -> AsyncIterator[None]:
    # A short lease: a run killed with slots held gives them back within a minute, not five.
    async with concurrency(limit_name, occupy=1, strict=True, lease_duration=60):
        yield


async def ensure_global_limit(name: str, limit: int, *, per_minute: int | None = None) -> bool:
    """Create the named global concurrency limit if it does not exist (an existing one is left as
    configured: an operator may have tuned it). With ``per_minute`` it is a rate limit: slots decay.
    Returns True when it was created."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        decay = per_minute / WINDOW_S if per_minute else None
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay or 0.0)
        )
    limits_logger.info("created Prefect global concurrency limit %r (limit %d)", name, limit)
    return True


# ==== The submit task =============================================================================

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


T = TypeVar("T")


class SubmitCache:
    """The submit task's cache, read and written without a task run: the same records (key
    :meth:`SubmitRequest.cache_key`, expiry :data:`RETENTION`) in the same result storage as the
    task's own, so a run with task runs, one without and an estimate all see one cache."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    @classmethod
    async def of(cls, submit_task: Task[..., Any]) -> SubmitCache:
        """The cache of ``submit_task`` (:data:`submit`, or a copy with other options)."""
        return cls(await ResultStore().aupdate_for_task(submit_task))

    async def _io(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Placed like the output's small files: on the event loop for a local folder, else a thread.
        local = isinstance(self._store.result_storage, LocalFileSystem)
        return await small_io(local, partial(call, *args, **kwargs))

    async def contains(self, key: str) -> bool:
        """Whether a record exists; an unreadable store counts as no record."""
        try:
            return bool(await self._store.aexists(key))
        except Exception:
            return False

    async def get(self, key: str) -> SubmittedPrediction | None:
        """The recorded submission, or None; raises when a record exists but cannot be read."""

        def read() -> SubmittedPrediction | None:
            if not self._store.exists(key):
                return None
            return SubmittedPrediction.model_validate(self._store.read(key).result)

        return await self._io(read)

    async def put(self, key: str, submitted: SubmittedPrediction) -> None:
        expiration = cast(Any, datetime.now(UTC) + RETENTION)
        await self._io(self._store.write, obj=submitted, key=key, expiration=expiration)
