"""Process one prepared item: submit (cached by content), wait, fetch, record.

Every outcome, good or bad, ends as an :class:`ItemOutcome`; an exception from one item never
reaches the others. Items with the same content share one prediction within a run.

Sections: garbage collection and signals while a batch runs, preparation (manifest rows into
submit requests), one item, and prices.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import fsspec
from prefect import Task
from pydantic import ValidationError

from flows.manifest import ManifestItem
from flows.progress import MESH_FILE, METADATA_FILE, ItemOutcome, ItemStatus, metadata_document
from tasks.client import Price, WaveSpeedClient
from tasks.errors import (
    AuthenticationError,
    BudgetExceededError,
    ClaimedElsewhereError,
    ImageProblem,
    NotFoundError,
    OutputRefusedError,
    PredictionTimeoutError,
    SubmitOutcomeUnknownError,
    SubmitsStoppedError,
    WaitAbandonedError,
    WaveSpeedError,
)
from tasks.fetch import FetchedFile, FetchedMesh, fetch, fetch_outputs
from tasks.models import (
    MAX_IMAGE_BYTES,
    TRANSIENT_TASK_CODES,
    ImageInfo,
    ModelSpec,
    Prediction,
    describe_validation_error,
    inspect_image,
)
from tasks.storage import (
    ClaimRegistry,
    PredictionLedger,
    Storage,
    storage_error_message,
    utc_now,
)
from tasks.submit import (
    ImageInput,
    SubmitCache,
    SubmitRequest,
    SubmittedPrediction,
    SubmitThrottle,
    in_flight_slot,
    submit,
    submit_prediction,
)
from tasks.wait import wait

if TYPE_CHECKING:
    from flows.deliver import Deliverer
    from tasks.urlcheck import UrlCheck

# ==== Garbage collection ==========================================================================
#
# Fewer garbage-collector passes while a large batch is in flight.
#
# Thousands of items in flight keep hundreds of thousands of objects alive (tasks, futures,
# connections, records). CPython's collector walks the older ones again and again as allocations
# pile up, a visible share of a large run's CPU (docs/performance.md). During the batch the objects
# alive before it are frozen (never walked), and young collections happen every 50,000 net
# allocations instead of 700. Settings are restored after.

BATCH_GEN0_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(previous[0], BATCH_GEN0_THRESHOLD), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


# ==== Signals =====================================================================================
#
# Ctrl-C and SIGTERM while a flow runs: the first stops the run cleanly, a second exits at once.
#
# A terminal's Ctrl-C (SIGINT to the foreground process group), ``docker stop``, Kubernetes and a
# Prefect worker cancelling a flow run (SIGTERM) all end up here while the flow's event loop runs on
# the main thread (``hy3d run``, ``asyncio.run(generate_meshes(...))``, a worker's flow run process).
# What a stop does is the flow's business (``RunContext.stop(..., interrupt=True)``); this section only
# turns the first signal into that call and the second into an immediate exit: the ledger's
# write-ahead intent makes even that safe (a submit in flight stays ``submitting``, and the re-run
# reports it ``submit_unknown`` instead of paying again).
#
# Elsewhere (another thread, no running loop) signals keep Prefect's and Python's handling.

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def hard_exit(signum: int, _frame: Any = None) -> None:
    """A second signal: leave now, without cleaning up (what is paid for is in the ledger)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(exit_code(signum))


@dataclass
class Interruption:
    """The first SIGINT/SIGTERM of a flow run, and who to tell."""

    signum: int | None = None
    _listeners: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        if self.signum is None:
            return None
        return f"interrupted by {signal.Signals(self.signum).name}"

    def on_stop(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` on the first signal (at once if it came already)."""
        self._listeners.append(listener)
        if self.reason is not None:
            listener(self.reason)

    def received(self, signum: int) -> None:
        if self.signum is not None:
            hard_exit(signum)
        self.signum = signum
        for listener in list(self._listeners):
            listener(self.reason or "interrupted")


@contextlib.asynccontextmanager
async def stop_on_signals() -> AsyncIterator[Interruption]:
    """While the block runs, SIGINT and SIGTERM go to the yielded :class:`Interruption`. After the
    block, a run that was interrupted exits at once on a further signal; one that was not gets
    back the handlers it had (Prefect's SIGTERM bridge, asyncio's or Python's SIGINT handling)."""
    interruption = Interruption()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            try:
                loop.add_signal_handler(sig, interruption.received, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not a Unix selector loop
                break
            installed.append(sig)
    try:
        yield interruption
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            before = previous[sig] if previous[sig] is not None else signal.SIG_DFL
            signal.signal(sig, hard_exit if interruption.signum is not None else before)


# ==== Preparation =================================================================================
#
# Turn manifest rows into submit requests, checking every image before anything is paid for.

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


# ==== One item ====================================================================================


@dataclass(frozen=True)
class PredictionResult:
    submitted: SubmittedPrediction
    prediction: Prediction  # terminal
    reused: bool  # an earlier submit (ledger or cache) was resumed: nothing new was paid for
    warnings: tuple[str, ...] = ()


@dataclass
class RunContext:
    client: WaveSpeedClient
    storage: Storage
    ledger: PredictionLedger
    claims: ClaimRegistry
    storage_options: dict[str, Any]
    concurrency: int  # the account's slots this run keeps busy
    wait_timeout_s: float | None
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    manifest: str
    flow_run_id: str | None = None
    retry_failed: bool = False
    resubmit_unknown: bool = False
    throttle: SubmitThrottle | None = None
    in_flight_limit: str | None = None  # Prefect global concurrency limit shared by all runs
    prices: dict[str, float | None] = field(default_factory=dict)  # content key -> USD
    # True: every submit/wait/fetch is a Prefect task run (visible in the UI). False: plain
    # coroutines, for runs too large for the server to record three task runs per item.
    task_runs: bool = True
    previews: bool = True  # render DEST/<id>/preview.png as items land (docs/performance.md: its CPU)
    submit_cache: SubmitCache | None = None  # read and written here only when task_runs is False
    submit_task: Task[..., Any] = submit
    stop_reason: str | None = None
    interrupted: bool = False  # Ctrl-C or SIGTERM: waits are given up too
    refund_usd: float = 0.0  # what failed predictions paid for in this run will have refunded
    # Predictions queued on WaveSpeed beyond `concurrency`: one starts the moment a slot frees, while
    # we are still noticing the completion that freed it (tasks.submit.AUTO_QUEUE_HEADROOM).
    headroom: int = 0
    deliverer: Deliverer | None = None  # formats beyond mesh.glb (flows/deliver.py); None: glb only
    # A slot is held from the submit until the prediction is terminal: `concurrency` processing plus
    # `headroom` queued. Items also prepare, download and publish outside their slot, so that
    # the account never idles on our I/O; _items bounds all of it.
    _slots: asyncio.Semaphore = field(init=False)
    _items: asyncio.Semaphore = field(init=False)
    _predictions: dict[str, asyncio.Task[PredictionResult]] = field(default_factory=dict)
    _waits: set[asyncio.Task[Prediction]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency + self.headroom)
        self._items = asyncio.Semaphore(2 * self.concurrency + self.headroom)

    def log_item(self, message: str, *args: object) -> None:
        """Per-item success lines: INFO in small runs; DEBUG in large ones, where a line per item
        costs more than it tells (failures are always logged, the summary counts the rest)."""
        self.logger.log(logging.INFO if self.task_runs else logging.DEBUG, message, *args)

    def note_refund(self, prepared: PreparedItem, prediction: Prediction, reused: bool) -> None:
        """WaveSpeed refunds a failed prediction within 3 hours: count those this run paid for."""
        if not reused and prediction.is_terminal and not prediction.succeeded:
            self.refund_usd += self.prices.get(prepared.request.content_key) or 0.0

    def stop(self, reason: str, *, interrupt: bool = False) -> None:
        """Stop the run: the one place that decides what that does. No submit is sent from now on
        (items not submitted yet end ``skipped``); a submit already sent is answered and its
        prediction id recorded in the ledger. With ``interrupt`` (Ctrl-C, SIGTERM) the waits are
        given up as well: their ids are in the ledger, so a re-run resumes them without paying."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.logger.error("Stopping the run: %s", reason)
        if self.throttle is not None:
            self.throttle.close(reason)
        if interrupt and not self.interrupted:
            self.interrupted = True
            for waiting in list(self._waits):
                waiting.cancel()


async def _submit(
    ctx: RunContext, prepared: PreparedItem, *, fresh: bool
) -> tuple[SubmittedPrediction, bool]:
    """Run the submit task; ``fresh`` bypasses Prefect's cache (its record points at a dead prediction).
    Returns the submission and whether it was served from the cache."""
    if ctx.stop_reason is not None:
        raise SubmitsStoppedError(ctx.stop_reason)
    if ctx.task_runs:
        task = ctx.submit_task.with_options(refresh_cache=True) if fresh else ctx.submit_task
        state = await task(
            ctx.client, prepared.request, ctx.storage_options, ctx.ledger, ctx.throttle, return_state=True
        )
        submitted: SubmittedPrediction = await state.aresult()
        cached = state.name == "Cached"
    else:
        submitted, cached = await _submit_without_task_run(ctx, prepared, fresh=fresh)
    if cached:
        # Paid for elsewhere (another output, same result storage): note it in this output's ledger too.
        await ctx.storage.small_io(
            ctx.ledger.record_submitted,
            prepared.request.content_key,
            submitted.prediction_id,
            submitted.model,
            prepared.request.api_root,
            submitted.inputs,
        )
    return submitted, cached


async def _submit_without_task_run(
    ctx: RunContext, prepared: PreparedItem, *, fresh: bool
) -> tuple[SubmittedPrediction, bool]:
    """The submit task's body and its cache records, without a task run: the same records in the
    same result storage, so both modes share the never-pay-twice guarantee."""
    cache = ctx.submit_cache
    assert cache is not None
    key = prepared.request.cache_key
    if not fresh:
        try:
            cached = await cache.get(key)
        except Exception as exc:  # an unreadable record is a cache miss, as it is for the task
            ctx.logger.warning("%s: submit cache record unreadable (%s); submitting", prepared.item.id, exc)
        else:
            if cached is not None:
                return cached, True
    submitted = await submit_prediction(
        ctx.client, prepared.request, ctx.storage_options, ctx.ledger, ctx.throttle
    )
    try:
        await cache.put(key, submitted)
    except Exception as exc:  # the ledger still has it; only other outputs lose the shortcut
        ctx.logger.warning("%s: could not write the submit cache record: %s", prepared.item.id, exc)
    return submitted, False


async def _poll(ctx: RunContext, submitted: SubmittedPrediction) -> Prediction:
    if ctx.task_runs:
        return await wait(ctx.client, submitted.prediction_id, ctx.wait_timeout_s, submitted.model)
    return await ctx.client.wait(submitted.prediction_id, timeout_s=ctx.wait_timeout_s, model=submitted.model)


async def _wait(ctx: RunContext, submitted: SubmittedPrediction) -> Prediction:
    """Poll until terminal, unless the run is interrupted: then WaitAbandonedError (RunContext.stop)."""
    if ctx.interrupted:
        raise WaitAbandonedError(submitted.prediction_id, ctx.stop_reason or "interrupted")
    waiting = asyncio.ensure_future(_poll(ctx, submitted))
    ctx._waits.add(waiting)
    try:
        return await waiting
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if ctx.interrupted and waiting.cancelled() and not (current and current.cancelling()):
            raise WaitAbandonedError(submitted.prediction_id, ctx.stop_reason or "interrupted") from None
        raise
    finally:
        ctx._waits.discard(waiting)


async def _from_ledger(
    ctx: RunContext, prepared: PreparedItem, warnings: list[str]
) -> SubmittedPrediction | None:
    """The prediction an earlier run paid for, if it can still be polled; None means submit."""
    entry = await ctx.storage.small_io(ctx.ledger.read, prepared.request.content_key)
    if entry is None:
        return None
    if entry.state in ("unknown", "submitting"):
        reason = entry.reason or "the run stopped while the submit was in flight"
        if not ctx.resubmit_unknown:
            raise SubmitOutcomeUnknownError(
                f"an earlier submit ({entry.recorded_at}) may have been accepted: {reason}; "
                "not resent (re-run with resubmit_unknown / --resubmit-unknown to pay again)"
            )
        warnings.append(f"resubmitted although an earlier submit may have been accepted ({reason})")
        return None
    if entry.prediction_id is None:
        return None
    if entry.api_root.rstrip("/") != prepared.request.api_root.rstrip("/"):
        # Only the API that made a prediction can answer for it: from here its outcome is unknown.
        here = prepared.request.api_root
        reason = f"prediction {entry.prediction_id} was made through {entry.api_root}, not {here}"
        if not ctx.resubmit_unknown:
            raise SubmitOutcomeUnknownError(
                f"{reason}; re-run with WAVESPEED_BASE_URL={entry.api_root} to fetch its mesh, or with "
                "resubmit_unknown / --resubmit-unknown to pay for a new one"
            )
        warnings.append(f"resubmitted: {reason}")
        return None
    if entry.expired:
        warnings.append(
            f"prediction {entry.prediction_id} from {entry.recorded_at} is past WaveSpeed's 7-day "
            "retention; submitted anew (billed)"
        )
        return None
    return SubmittedPrediction(
        prediction_id=entry.prediction_id,
        model=entry.model,
        content_key=entry.content_key,
        inputs=entry.inputs,
        submitted_at=entry.recorded_at,
    )


async def _submit_and_wait(ctx: RunContext, prepared: PreparedItem) -> PredictionResult:
    key = prepared.request.content_key
    holder = await ctx.storage.small_io(ctx.claims.try_claim, key)
    if holder is not None:
        raise ClaimedElsewhereError(f"being processed by {holder.describe()}")
    async with ctx._slots, in_flight_slot(ctx.in_flight_limit):
        try:
            return await _claimed_submit_and_wait(ctx, prepared)
        except AuthenticationError as exc:
            # Stop before the slot passes to the next item: it must not send with a rejected key.
            ctx.stop(str(exc))
            raise


async def _claimed_submit_and_wait(ctx: RunContext, prepared: PreparedItem) -> PredictionResult:
    warnings: list[str] = []
    submitted = await _from_ledger(ctx, prepared, warnings)
    if submitted is not None:
        reused = True
    else:
        submitted, reused = await _submit(ctx, prepared, fresh=bool(warnings))
    try:
        prediction = await _wait(ctx, submitted)
    except NotFoundError:
        # Deleted after WaveSpeed's 7-day retention (or made with another account): only a new
        # submit can produce the mesh. It is billed, so it is said in the metadata.
        warnings.append(
            f"prediction {submitted.prediction_id} no longer exists on WaveSpeed; submitted anew (billed)"
        )
        ctx.logger.warning("%s: %s", prepared.item.id, warnings[-1])
        submitted, reused = (await _submit(ctx, prepared, fresh=True))[0], False
        prediction = await _wait(ctx, submitted)
    if prediction.status == "failed" and prediction.code in TRANSIENT_TASK_CODES and ctx.retry_failed:
        ctx.note_refund(prepared, prediction, reused)
        warnings.append(
            f"prediction {prediction.id} failed with transient code {prediction.code}; "
            "submitted again as asked (retry_failed, billed)"
        )
        ctx.logger.warning("%s: %s", prepared.item.id, warnings[-1])
        submitted, reused = (await _submit(ctx, prepared, fresh=True))[0], False
        prediction = await _wait(ctx, submitted)
    ctx.note_refund(prepared, prediction, reused)
    return PredictionResult(submitted, prediction, reused, tuple(warnings))


async def _shared_prediction(ctx: RunContext, prepared: PreparedItem) -> PredictionResult:
    """One claim+submit+wait per content key in this run, however many ids share the image."""
    key = prepared.request.content_key
    running = ctx._predictions.get(key)
    if running is None:
        running = asyncio.ensure_future(_submit_and_wait(ctx, prepared))
        ctx._predictions[key] = running
    return await asyncio.shield(running)


async def _fetch(ctx: RunContext, outputs: list[str], item_id: str) -> FetchedMesh:
    if ctx.task_runs:
        return await fetch(ctx.client, outputs, ctx.storage, item_id, MESH_FILE)
    return await fetch_outputs(ctx.client, outputs, ctx.storage, item_id, MESH_FILE)


async def _fetch_mesh(ctx: RunContext, prediction: Prediction, item_id: str) -> FetchedMesh:
    """Fetch the outputs; when the CDN refuses them (a signed URL that expired...), poll the
    prediction once more for fresh URLs and try those."""
    try:
        return await _fetch(ctx, prediction.outputs, item_id)
    except OutputRefusedError as exc:
        ctx.logger.warning("%s: %s; asking WaveSpeed for fresh output URLs", item_id, exc)
    fresh = await ctx.client.get_prediction(prediction.id)
    try:
        return await _fetch(ctx, fresh.outputs, item_id)
    except OutputRefusedError as exc:
        raise OutputRefusedError(
            exc.status_code,
            f"{exc.message}; also with the fresh URLs of a new poll of {prediction.id}; re-run to try again "
            "(nothing is paid again) before WaveSpeed deletes the result after 7 days",
        ) from exc


def already_done(storage: Storage, prepared: PreparedItem) -> dict[str, Any] | None:
    """The existing metadata when this id already holds a verified mesh of the same content."""
    item_id = prepared.item.id
    existing = storage.read_json(item_id, METADATA_FILE)
    if not isinstance(existing, dict) or existing.get("status") != ItemStatus.completed:
        return None
    # Metadata written before the content key left out the API root holds what is now the cache key.
    if existing.get("content_key") not in (prepared.request.content_key, prepared.request.cache_key):
        return None
    expected = (existing.get("output") or {}).get("bytes")
    if expected is None or storage.size(item_id, MESH_FILE) != expected:
        return None
    return existing


def _record_may_be_written(storage: Storage, item_id: str) -> bool:
    """A failed attempt must not overwrite the metadata of a mesh that landed earlier."""
    existing = storage.read_json(item_id, METADATA_FILE)
    return not (isinstance(existing, dict) and existing.get("status") == ItemStatus.completed)


async def process_item(ctx: RunContext, prepared: PreparedItem) -> ItemOutcome:
    item = prepared.item
    async with ctx._items:
        outcome = ItemOutcome(
            id=item.id,
            row=item.row,
            status=ItemStatus.skipped,
            source=item.image,
            price_usd=ctx.prices.get(prepared.request.content_key),
        )
        if ctx.stop_reason is not None:
            outcome.error = f"not attempted: {ctx.stop_reason}"
            return outcome

        started, started_at = time.monotonic(), utc_now()
        existing = await ctx.storage.small_io(already_done, ctx.storage, prepared)
        if existing is not None:
            await _note_already_done(ctx, outcome, existing)
            return outcome

        attempt = await _attempt(ctx, prepared, outcome)
        if attempt is None:
            return outcome
        outcome.seconds = round(time.monotonic() - started, 3)
        await _finish_item(ctx, prepared, outcome, attempt, started_at)
        return outcome


async def _note_already_done(ctx: RunContext, outcome: ItemOutcome, existing: dict[str, Any]) -> None:
    """Fill in the outcome of an item whose mesh an earlier run landed."""
    outcome.status = ItemStatus.already_done
    outcome.prediction_id = (existing.get("prediction") or {}).get("id")
    outcome.mesh = ctx.storage.url(outcome.id, MESH_FILE)
    outcome.faces = (existing.get("mesh") or {}).get("faces")
    if ctx.deliverer is not None:  # the formats it lacks, from its mesh: nothing to pay for
        outcome.deliverables = await ctx.deliverer.add_to_existing(outcome.id, existing)
    ctx.log_item("%s: already done, nothing to pay for", outcome.id)


@dataclass
class _Attempt:
    """What an item's prediction and fetch produced, as far as they got."""

    result: PredictionResult | None = None
    mesh: FetchedMesh | None = None


async def _attempt(ctx: RunContext, prepared: PreparedItem, outcome: ItemOutcome) -> _Attempt | None:
    """Get the item's prediction (shared, resumed or submitted) and fetch its mesh, setting the
    outcome's status and error. None when the item is left without a record: not submitted, or
    owned by another run."""
    attempt = _Attempt()
    try:
        attempt.result = await _shared_prediction(ctx, prepared)
        prediction = attempt.result.prediction
        outcome.prediction_id = prediction.id
        if prediction.succeeded:
            attempt.mesh = await _fetch_mesh(ctx, prediction, outcome.id)
            outcome.status = ItemStatus.completed
            outcome.mesh, outcome.faces = attempt.mesh.url, attempt.mesh.stats.faces
        else:
            outcome.status = ItemStatus.failed
            outcome.error = prediction.error or f"prediction {prediction.status}"
            outcome.error_code = prediction.code or None
    except ClaimedElsewhereError as exc:
        outcome.status, outcome.error = ItemStatus.claimed_elsewhere, str(exc)
        return None  # the other run owns this item's files
    except SubmitsStoppedError as exc:
        outcome.error = f"not attempted: {exc}"
        return None
    except WaitAbandonedError as exc:
        outcome.error, outcome.prediction_id = str(exc), exc.prediction_id
    except BudgetExceededError as exc:
        outcome.error = f"not submitted, over budget: {exc}"
        return None
    except AuthenticationError as exc:
        ctx.stop(str(exc))
        outcome.status, outcome.error = ItemStatus.error, str(exc)
    except SubmitOutcomeUnknownError as exc:
        outcome.status, outcome.error = ItemStatus.submit_unknown, str(exc)
    except PredictionTimeoutError as exc:
        outcome.status, outcome.error = ItemStatus.timeout, str(exc)
        outcome.prediction_id = exc.prediction_id
    except (WaveSpeedError, OSError, ValueError) as exc:
        outcome.status, outcome.error = ItemStatus.error, _error_text(ctx, exc)
    return attempt


async def _finish_item(
    ctx: RunContext, prepared: PreparedItem, outcome: ItemOutcome, attempt: _Attempt, started_at: str
) -> None:
    """Record an attempt in the output: the other formats of a landed mesh, ``metadata.json`` (unless
    a failure would overwrite a landed mesh's), the gallery's files; then log the outcome."""
    item_id = outcome.id
    if ctx.deliverer is not None and outcome.status is ItemStatus.completed:
        outcome.deliverables = await ctx.deliverer.deliver(item_id)
    document = _metadata(ctx, prepared, outcome, attempt.result, attempt.mesh, started_at)
    try:
        if outcome.status.landed or await ctx.storage.small_io(_record_may_be_written, ctx.storage, item_id):
            await ctx.storage.small_io(ctx.storage.write_json, document, item_id, METADATA_FILE)
    except OSError as exc:
        outcome.status = ItemStatus.error
        outcome.error = f"could not write metadata: {_error_text(ctx, exc)}"
    if ctx.previews and outcome.status is ItemStatus.completed:
        # A thumbnail, the viewer's copy of the mesh and the source image, for the gallery;
        # never fails the item (it logs instead).
        await asyncio.to_thread(_write_preview, ctx.storage, item_id)
    if outcome.status.landed:
        ctx.log_item("%s: %s", item_id, outcome.status.value)
    else:
        ctx.logger.warning("%s: %s (%s)", item_id, outcome.status.value, outcome.error)


def _write_preview(storage: Storage, item_id: str) -> None:
    # The gallery brings numpy and trimesh: they load with the first preview, in its thread, not
    # with the flow (they would delay the first submit).
    from flows.gallery import write_preview

    write_preview(storage, item_id)


def _error_text(ctx: RunContext, exc: BaseException) -> str:
    """An item's error: clear words for what is wrong with the output (full disk, permission
    denied...), else the exception's type and message."""
    return storage_error_message(exc, ctx.storage.root_url) or f"{type(exc).__name__}: {exc}"


def _image_record(image: ImageInput, info: ImageInfo | None) -> dict[str, Any]:
    return {
        "input": image.field,
        "source": image.source,
        "sha256": image.sha256 if image.url is None else None,
        "url_sha256": image.sha256 if image.url is not None else None,
        "content_type": image.content_type if image.url is None else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
    }


def _file_record(file: FetchedFile) -> dict[str, Any]:
    return {
        "path": file.url.rsplit("/", 1)[-1],
        "source_url": file.source_url,
        "kind": file.kind,
        "bytes": file.size,
        "sha256": file.sha256,
    }


def _output_record(mesh: FetchedMesh) -> dict[str, Any]:
    """``output`` in metadata.json: the mesh, what it was converted from, the other files."""
    original = mesh.original
    return {
        "source_url": mesh.source_url,
        "path": MESH_FILE,
        "url": mesh.url,
        "bytes": mesh.size,
        "sha256": mesh.sha256,
        "converted_from": None if original is None else original.kind,
        "original": None if original is None else _file_record(original),
        "other_files": [_file_record(extra) for extra in mesh.extras],
    }


def _metadata(
    ctx: RunContext,
    prepared: PreparedItem,
    outcome: ItemOutcome,
    result: PredictionResult | None,
    mesh: FetchedMesh | None,
    started_at: str,
) -> dict[str, Any]:
    request = prepared.request
    prediction = result.prediction if result else None
    images = {image.field: _image_record(image, prepared.images.get(image.field)) for image in request.images}
    main = request.images[0].field if request.images else None
    return metadata_document(
        id=outcome.id,
        status=outcome.status.value,
        source={"manifest": ctx.manifest, "row": prepared.item.row, "image": prepared.item.image or None},
        image=images.pop(main) if main else None,
        other_images=images,
        model=request.model,
        price_usd=ctx.prices.get(request.content_key),
        inputs=result.submitted.inputs if result else {**request.inputs},
        content_key=request.content_key,
        prediction=None
        if prediction is None
        else {
            "id": prediction.id,
            "status": prediction.status,
            "created_at": prediction.created_at,
            **({"output_objects": prediction.output_objects} if prediction.output_objects else {}),
            "code": prediction.code,
            "error": prediction.error,
            "reused": result.reused if result else False,
            "submitted_at": result.submitted.submitted_at if result else None,
        },
        timings={
            "wavespeed_inference_ms": prediction.inference_ms if prediction else None,
            "wavespeed_execution_ms": prediction.execution_time_ms if prediction else None,
            "started_at": started_at,
            "finished_at": utc_now(),
            "wall_seconds": outcome.seconds,
        },
        output=None if mesh is None else _output_record(mesh),
        mesh=mesh.stats.as_dict() if mesh else None,
        error=None if outcome.error is None else {"message": outcome.error, "code": outcome.error_code},
        warnings=list(result.warnings) if result else [],
        flow_run_id=ctx.flow_run_id,
        **({"deliverables": outcome.deliverables} if outcome.deliverables is not None else {}),
    )


# ==== Prices ======================================================================================
#
# What a run will cost before it starts: items to pay for (after what is done, resumable or
# cached), the price of each, and the account balance.


@dataclass
class Estimate:
    items: int = 0  # valid items in the manifest
    already_done: int = 0  # a verified mesh of the same content is in the output
    already_paid: int = 0  # a prediction exists (ledger or submit cache): resumed, not paid again
    to_pay: int = 0  # unique contents that need a new submit
    total_usd: float | None = 0.0  # None when some price could not be read
    balance_usd: float | None = None
    unit_prices: dict[str, Price | None] = field(default_factory=dict)  # inputs (JSON) -> price
    price_by_key: dict[str, float | None] = field(default_factory=dict)  # content key -> USD billed

    def lines(self) -> list[str]:
        lines = [
            f"items in the manifest: {self.items}",
            f"already done in the output: {self.already_done}",
            f"already paid for (resumed, not paid again): {self.already_paid}",
            f"to pay for: {self.to_pay}",
        ]
        for inputs, price in self.unit_prices.items():
            shown = "unknown"
            if price is not None and price.discounted_usd is not None:
                shown = (
                    f"${price.discounted_usd:.4f} (discounted from ${price.list_usd:.4f}; the total uses it)"
                )
            elif price is not None:
                shown = f"${price.list_usd:.4f}"
            lines.append(f"price per item: {shown}" + (f" (inputs {inputs})" if inputs != "{}" else ""))
        lines.append(f"total: ${self.total_usd:.4f}" if self.total_usd is not None else "total: unknown")
        if self.balance_usd is not None:
            lines.append(f"account balance: ${self.balance_usd:.4f}")
        return lines


def _inputs_key(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)


async def price_items(
    client: WaveSpeedClient, prepared: list[PreparedItem]
) -> tuple[dict[str, Price | None], dict[str, float | None]]:
    """(price per distinct inputs, price per content key); None where WaveSpeed would not say."""
    unit_prices: dict[str, Price | None] = {}
    by_key: dict[str, float | None] = {}
    for entry in prepared:
        inputs_key = _inputs_key(entry.request.inputs)
        if inputs_key not in unit_prices:
            try:
                unit_prices[inputs_key] = await client.get_price(entry.request.model, entry.request.inputs)
            except AuthenticationError:
                raise
            except WaveSpeedError:
                unit_prices[inputs_key] = None
        price = unit_prices[inputs_key]
        by_key[entry.request.content_key] = None if price is None else price.billed_usd
    return unit_prices, by_key


async def estimate_cost(
    client: WaveSpeedClient,
    prepared: list[PreparedItem],
    *,
    storage: Storage | None,
    cache: SubmitCache,
) -> Estimate:
    """Count what would be paid for and price it. Prices come from WaveSpeed's price endpoint, once
    per distinct set of non-image inputs (the image does not change the price).

    The output and the ledger are read here and read again when each item is processed: this is a
    forecast, while what decides whether to pay is read afresh at that moment (another run on the
    same output may have landed or submitted the item meanwhile)."""
    estimate = Estimate(items=len(prepared))
    ledger = PredictionLedger(storage) if storage is not None else None
    seen: set[str] = set()
    pending: list[PreparedItem] = []
    for entry in prepared:
        key = entry.request.content_key
        if storage is not None and await asyncio.to_thread(already_done, storage, entry) is not None:
            estimate.already_done += 1
            continue
        if key in seen:
            continue  # the same content under another id: one prediction serves both
        seen.add(key)
        recorded = await asyncio.to_thread(ledger.read, key) if ledger is not None else None
        paid = recorded is not None and recorded.state == "submitted" and not recorded.expired
        if paid or await cache.contains(entry.request.cache_key):
            estimate.already_paid += 1
            continue
        pending.append(entry)
    estimate.to_pay = len(pending)

    estimate.unit_prices, estimate.price_by_key = await price_items(client, prepared)
    prices = [estimate.price_by_key[entry.request.content_key] for entry in pending]
    estimate.total_usd = None if any(price is None for price in prices) else sum(p or 0.0 for p in prices)
    try:
        estimate.balance_usd = await client.get_balance()
    except AuthenticationError:
        raise
    except WaveSpeedError:
        estimate.balance_usd = None
    return estimate
