"""The flow: a manifest of images in, GLB meshes and metadata out, on any fsspec storage."""

# No `from __future__ import annotations` here: flow.serve() pickles the flow, and string
# annotations (Annotated, Field…) could not be resolved in the process that runs it.

import asyncio
import uuid
from dataclasses import replace
from functools import partial
from typing import Annotated, Any, Literal

from prefect import State, Task, flow, get_run_logger
from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from prefect.filesystems import WritableFileSystem
from prefect.results import ResultStore
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed
from pydantic import Field

from flows.artifacts import ProgressArtifact, publish_run_artifacts
from flows.deliver import Deliverer
from flows.durations import read_durations, seed_estimator, write_durations
from flows.estimate import estimate_cost, price_items
from flows.gallery import publish_gallery
from flows.gctuning import fewer_gc_passes
from flows.interrupt import stop_on_signals
from flows.manifest import RowProblem, load_manifest
from flows.parameters import (
    DEFAULT_FORMATS,
    ConcurrencyParam,
    FormatsParam,
    InputsParam,
    MaxFacesParam,
    ModelParam,
    QueueHeadroomParam,
    ResubmitUnknownParam,
    StorageOptionsParam,
    SubmitsPerMinuteParam,
    WaitTimeoutParam,
    WebTexturePxParam,
)
from flows.pipeline import RunContext, process_item
from flows.prepare import PreparedItem, RejectedItem, prepare_items
from flows.progress import current_progress
from flows.records import (
    RUNS_FOLDER,
    ItemOutcome,
    ItemStatus,
    RunFailedError,
    RunInterruptedError,
    RunSummary,
    first_row_problems,
    utc_now,
)
from tasks.claims import ClaimRegistry
from tasks.client import WaveSpeedClient
from tasks.credentials import aresolve_settings
from tasks.deliverables import (
    DEFAULT_WEB_TEXTURE_PX,
    DeliverableSettings,
    check_available,
)
from tasks.errors import (
    APIUnreachableError,
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    CredentialsBlockNotFoundError,
    DeliverablesUnavailableError,
    InvalidSettingsError,
    ManifestError,
    MissingAPIKeyError,
    OutputNotWritableError,
    UnknownFormatError,
    UnknownModelError,
)
from tasks.ledger import PredictionLedger
from tasks.limits import (
    Budget,
    SubmitThrottle,
    ensure_global_limit,
    queue_headroom_for,
)
from tasks.models import ModelSpec, check_model
from tasks.redact import redact_logs
from tasks.settings import DEFAULT_MODEL
from tasks.storage import Storage, storage_error_message, writable_storage
from tasks.submit import submit

# A claim outlives the longest an item can take (wait deadline + download), then others may take over.
CLAIM_LEASE_MARGIN_S = 900.0
# Above this many items a run does not create three task runs per item: they cost ~5 ms of CPU
# each on the flow's event loop, which then lags behind the predictions it waits for, and a
# SQLite-backed server falls behind at a few thousand (README, "Performance").
AUTO_TASK_RUNS_MAX_ITEMS = 250
# Above this many items thumbnails are not rendered as items land (~0.1 s CPU each); the gallery
# fills in missing ones, a bounded number per run.
AUTO_PREVIEWS_MAX_ITEMS = 100


def _invalid(message: str, row: int, item_id: str, source: str) -> ItemOutcome:
    return ItemOutcome(id=item_id, row=row, status=ItemStatus.invalid, source=source, error=message)


async def _submit_task(cache_storage_block: str | None) -> Task[..., Any]:
    """The submit task, with its cache records and results on the named filesystem block if any."""
    if not cache_storage_block:
        return submit
    try:
        block = await Block.aload(cache_storage_block)
    except (ValueError, ObjectNotFound) as exc:
        raise ConfigurationError(
            f"cannot load the cache storage block {cache_storage_block!r} (expected 'type-slug/name', "
            f"e.g. 'remote-file-system/hy3d-cache'): {exc}"
        ) from exc
    if not isinstance(block, WritableFileSystem):
        raise ConfigurationError(f"block {cache_storage_block!r} is not a writable filesystem block")
    return submit.with_options(result_storage=block)


async def _ensure_limits(
    concurrency_limit_name: str | None, in_flight: int, rate_limit_name: str | None, per_minute: int | None
) -> None:
    if rate_limit_name and not per_minute:
        raise ConfigurationError("rate_limit_name needs submits_per_minute (the rate to enforce)")
    try:
        if concurrency_limit_name:
            await ensure_global_limit(concurrency_limit_name, in_flight)
        if rate_limit_name and per_minute:
            await ensure_global_limit(rate_limit_name, per_minute, per_minute=per_minute)
    except Exception as exc:  # the server refusing (bad name...) is a configuration problem
        raise ConfigurationError(f"cannot set up the Prefect concurrency limits: {exc}") from exc


def _check_inputs(spec: ModelSpec, inputs: dict[str, Any]) -> None:
    unknown = sorted(set(inputs) - spec.option_fields)
    if unknown:
        accepted = ", ".join(sorted(spec.option_fields)) or "none besides the image"
        raise ConfigurationError(f"inputs {unknown} are not inputs of {spec.id} (it accepts: {accepted})")


def _invalid_rows(errors: list[RowProblem]) -> list[ItemOutcome]:
    """One invalid item per rejected row, however many problems the row has."""
    by_row: dict[int, list[str]] = {}
    ids: dict[int, str] = {}
    for error in errors:
        by_row.setdefault(error.row, []).append(str(error))
        ids[error.row] = error.id or f"row-{error.row}"
    return [_invalid("; ".join(messages), row, ids[row], "") for row, messages in by_row.items()]


def _spent(ctx: RunContext) -> float | None:
    """What the run's new submits have been billed so far."""
    return ctx.throttle.budget.spent if ctx.throttle and ctx.throttle.budget else None


def _summary_name(started_at: str, run_id: str | None) -> str:
    stamp = started_at.replace(":", "").replace("-", "").replace(".", "")
    return f"{stamp}-{run_id or 'local'}.json"


def _not_finished(entry: PreparedItem, reason: str) -> ItemOutcome:
    item = entry.item
    return ItemOutcome(
        id=item.id,
        row=item.row,
        status=ItemStatus.skipped,
        source=item.image,
        error=f"not finished: {reason}",
    )


async def _write_summary(storage: Storage, summary: RunSummary) -> None:
    """``DEST/runs/<started>-<flow run>.json``, at ``summary.summary_url``."""
    name = _summary_name(summary.started_at, summary.flow_run_id)
    await asyncio.to_thread(storage.write_json, summary.model_dump(mode="json"), RUNS_FOLDER, name)


@flow(name="hunyuan3d-meshes", log_prints=True, persist_result=False)
async def generate_meshes(
    manifest: Annotated[
        str,
        Field(
            description="Manifest URL or path: CSV/JSONL (column 'image', optional 'id'), TXT (one "
            "image per line), a folder, or a glob such as s3://bucket/photos/*.png."
        ),
    ],
    output: Annotated[
        str,
        Field(description="Where meshes go: any fsspec URL (local path, s3://, gs://, az://, memory://)."),
    ],
    model: ModelParam = DEFAULT_MODEL,
    concurrency: Annotated[
        ConcurrencyParam,
        Field(
            description="Predictions WaveSpeed processes at once for this run: your account's concurrent "
            "task limit (Bronze 2, Silver 300, Gold 3000)."
        ),
    ] = 2,
    queue_headroom: QueueHeadroomParam = None,
    storage_options: StorageOptionsParam = None,
    inputs: InputsParam = None,
    wait_timeout_s: Annotated[
        WaitTimeoutParam, Field(description="Deadline per prediction; default from settings.")
    ] = None,
    retry_failed: Annotated[
        bool,
        Field(
            description="Submit again predictions that failed with a transient code (5000/5003/5004). Billed."
        ),
    ] = False,
    resubmit_unknown: ResubmitUnknownParam = False,
    credentials_block: Annotated[
        str | None,
        Field(description="Name of a saved WaveSpeed Credentials block; default: WAVESPEED_* settings."),
    ] = None,
    submits_per_minute: Annotated[
        SubmitsPerMinuteParam,
        Field(description="Cap on submits per minute (WaveSpeed Bronze tier: 2). Default: no cap."),
    ] = None,
    concurrency_limit_name: Annotated[
        str | None,
        Field(
            description="Prefect global concurrency limit capping predictions in flight (queued ones "
            "included) across all runs (created with `concurrency` + headroom slots if missing). Default: "
            "this run's own limit only."
        ),
    ] = None,
    rate_limit_name: Annotated[
        str | None,
        Field(
            description="Prefect global concurrency limit used as a shared submits-per-minute rate limit "
            "(created from `submits_per_minute` if missing)."
        ),
    ] = None,
    task_runs: Annotated[
        Literal["auto", "per-step", "none"],
        Field(
            description="per-step: submit, wait and fetch are Prefect task runs (visible in the UI, ~5 ms "
            "each); none: plain coroutines, for runs larger than the server can record; auto: per-step "
            f"up to {AUTO_TASK_RUNS_MAX_ITEMS} items."
        ),
    ] = "auto",
    previews: Annotated[
        Literal["auto", "on", "off"],
        Field(
            description="Render DEST/<id>/preview.png and the gallery viewer's files as items land (~0.1 s "
            f"CPU each); auto: on up to {AUTO_PREVIEWS_MAX_ITEMS} items (such a run also fills in up to "
            "200 missing ones)."
        ),
    ] = "auto",
    max_cost: Annotated[
        float | None,
        Field(
            ge=0,
            description="Budget in USD: refuse to start when the estimate exceeds it, and stop submitting "
            "when the run's spending would.",
        ),
    ] = None,
    cache_storage_block: Annotated[
        str | None,
        Field(
            description="Saved Prefect filesystem block ('remote-file-system/NAME') holding submit cache "
            "records, so workers on different hosts share the never-pay-twice guarantee."
        ),
    ] = None,
    rows: Annotated[
        list[int] | None,
        Field(
            description="Only these manifest rows (row numbers as in the run summary); default: every "
            "row. The sharded flow hands each chunk its rows this way."
        ),
    ] = None,
    formats: FormatsParam = DEFAULT_FORMATS,
    web_texture_px: WebTexturePxParam = DEFAULT_WEB_TEXTURE_PX,
    max_faces: MaxFacesParam = None,
) -> State[Any]:
    """Fan out over the manifest; every item lands as ``DEST/<id>/mesh.glb`` + ``metadata.json``,
    a summary lands under ``DEST/runs/``. The run ends Failed if any item did not land.

    Args:
        manifest: Manifest URL or path: CSV/JSONL (column 'image', optional 'id'), TXT (one image per
            line), a folder, or a glob such as s3://bucket/photos/*.png.
        output: Where meshes go: any fsspec URL (local path, s3://, gs://, az://, memory://).
        model: WaveSpeed Hunyuan3D model id.
        concurrency: Predictions WaveSpeed processes at once for this run: your account's concurrent
            task limit (Bronze 2, Silver 300, Gold 3000).
        queue_headroom: Predictions submitted beyond `concurrency`, queued by WaveSpeed until a slot
            frees, so the account never idles while a finished one is downloaded and replaced (each is
            billed at its submit like any other). Default: half of `concurrency`, rounded up; 0: never
            more than `concurrency`.
        storage_options: fsspec options for the manifest, images and output (endpoint, credentials).
        inputs: Extra model inputs applied to every item.
        wait_timeout_s: Deadline per prediction in seconds; default from settings (900 s).
        retry_failed: Submit again predictions that failed with a transient code (5000/5003/5004). Billed.
        resubmit_unknown: Submit again items whose earlier submit may have been accepted. May bill twice.
        credentials_block: Name of a saved WaveSpeed Credentials block; default: WAVESPEED_* settings.
        submits_per_minute: Cap on submits per minute (WaveSpeed Bronze tier: 2). Default: no cap.
        concurrency_limit_name: Prefect global concurrency limit capping predictions in flight (queued
            ones included) across all runs (created with `concurrency` + headroom slots if missing).
        rate_limit_name: Prefect global concurrency limit used as a shared submits-per-minute rate limit
            (created from `submits_per_minute` if missing).
        task_runs: per-step: submit, wait and fetch are Prefect task runs (visible in the UI, ~5 ms
            each); none: plain coroutines, for runs larger than the server can record; auto: per-step up
            to 250 items.
        previews: Render DEST/<id>/preview.png and the gallery viewer's files as items land (~0.1 s CPU
            each); auto: on up to 100 items (such a run also fills in up to 200 missing ones).
        max_cost: Budget in USD: refuse to start when the estimate exceeds it, and stop submitting
            when the run's spending would.
        cache_storage_block: Saved Prefect filesystem block ('remote-file-system/NAME') holding submit
            cache records, so workers on different hosts share the never-pay-twice guarantee.
        rows: Only these manifest rows (row numbers as in the run summary); default: every row. The
            sharded flow hands each chunk its rows this way.
        formats: Files to deliver per item: glb (mesh.glb as WaveSpeed made it, always kept), web
            (mesh.web.glb: meshopt-compressed, WebP textures), usdz (mesh.usdz for AR Quick Look), stl
            (mesh.stl), obj (mesh.obj.zip). Items already done get the ones they lack, without a
            WaveSpeed call.
        web_texture_px: Web GLB: textures at most this many pixels on their longer side.
        max_faces: Web GLB and USDZ: simplify meshes with more faces to this many. Default: keep all.
    """
    logger = get_run_logger()
    redact_logs()
    started_at = utc_now()
    options = dict(storage_options or {})

    # Configuration problems end the run before any work, each as one clear message.
    try:
        settings = await aresolve_settings(credentials_block)
        settings.require_api_key()
        spec = check_model(model)
        _check_inputs(spec, inputs or {})
        deliverables = DeliverableSettings.from_parameters(formats, web_texture_px, max_faces)
        check_available(deliverables)  # a missing extra or tool: one line, before anything is paid
        loaded = await asyncio.to_thread(
            partial(
                load_manifest,
                manifest,
                options,
                known_fields=spec.option_fields,
                primary=spec.primary,
                image_columns=spec.extra_image_columns,
            )
        )
        if rows is not None:  # one chunk of a sharded run: same manifest, same ids, only these rows
            wanted = set(rows)
            loaded = replace(
                loaded,
                items=[item for item in loaded.items if item.row in wanted],
                errors=[error for error in loaded.errors if error.row in wanted],
            )
        storage = await asyncio.to_thread(writable_storage, output, options)
        submit_task = await _submit_task(cache_storage_block)
        headroom = queue_headroom_for(concurrency, queue_headroom)
        await _ensure_limits(
            concurrency_limit_name, concurrency + headroom, rate_limit_name, submits_per_minute
        )
    except (
        MissingAPIKeyError,
        InvalidSettingsError,
        CredentialsBlockNotFoundError,
        UnknownModelError,
        ManifestError,
        OutputNotWritableError,
        ConfigurationError,
        DeliverablesUnavailableError,
        UnknownFormatError,
    ) as exc:
        return Failed(message=str(exc), data=exc)

    problems = [str(warning) for warning in loaded.warnings]
    for warning in first_row_problems(problems):
        logger.warning(warning)
    run_id = flow_run.get_id()
    # With queue headroom the client times each queued prediction's polls from its expected start.
    # From here a first Ctrl-C or SIGTERM stops the run cleanly (RunContext.stop), a second exits.
    async with (
        WaveSpeedClient(settings, account_slots=concurrency if headroom else None) as client,
        stop_on_signals() as interruption,
    ):
        try:
            # A wrong key costs one request, not one per item; a wrong API root a few seconds.
            await client.check_access()
        except (AuthenticationError, APIUnreachableError) as exc:
            return Failed(message=str(exc), data=exc)

        prepared = await prepare_items(
            loaded.items,
            spec=spec,
            inputs=inputs or {},
            api_root=settings.base_url,
            storage_options=options,
            check_image_urls=settings.check_image_urls,
        )
        outcomes = _invalid_rows(loaded.errors)
        runnable: list[PreparedItem] = []
        unchecked: list[str] = []
        for entry in prepared:
            if isinstance(entry, RejectedItem):
                problem = RowProblem(entry.item.row, entry.field, entry.message, manifest=loaded.label)
                outcomes.append(_invalid(str(problem), entry.item.row, entry.item.id, entry.item.image))
            else:
                runnable.append(entry)
                for field, message in entry.warnings:
                    unchecked.append(str(RowProblem(entry.item.row, field, message, manifest=loaded.label)))
        for line in first_row_problems([outcome.error or "" for outcome in outcomes]):
            logger.error("%s", line)
        for line in first_row_problems(unchecked):
            logger.warning("%s", line)
        problems += unchecked

        lease_s = (wait_timeout_s or settings.wait_timeout_s) + CLAIM_LEASE_MARGIN_S
        if max_cost is not None:
            estimate = await estimate_cost(client, runnable, storage=storage, submit_task=submit_task)
            for line in estimate.lines():
                logger.info("estimate: %s", line)
            if estimate.total_usd is None:
                unpriced = ConfigurationError("WaveSpeed did not give a price, so max_cost cannot be kept")
                return Failed(message=str(unpriced), data=unpriced)
            if estimate.total_usd > max_cost:
                refused = BudgetExceededError(
                    f"the estimate is ${estimate.total_usd:.4f} for {estimate.to_pay} item(s), over max_cost "
                    f"${max_cost:.4f}; nothing was submitted"
                )
                return Failed(message=str(refused), data=refused)
            prices = estimate.price_by_key
        else:
            prices = (await price_items(client, runnable))[1]
        as_task_runs = task_runs == "per-step" or (
            task_runs == "auto" and len(runnable) <= AUTO_TASK_RUNS_MAX_ITEMS
        )
        ctx = RunContext(
            client=client,
            storage=storage,
            ledger=PredictionLedger(storage),
            claims=ClaimRegistry(storage, run=run_id or uuid.uuid4().hex, lease_s=lease_s),
            storage_options=options,
            concurrency=concurrency,
            queue_headroom=headroom,
            wait_timeout_s=wait_timeout_s,
            logger=logger,
            manifest=manifest,
            flow_run_id=run_id,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            throttle=SubmitThrottle(
                submits_per_minute, rate_limit_name if submits_per_minute else None, Budget(max_cost, prices)
            ),
            prices=prices,
            task_runs=as_task_runs,
            previews=previews == "on" or (previews == "auto" and len(runnable) <= AUTO_PREVIEWS_MAX_ITEMS),
            result_store=None if as_task_runs else await ResultStore().aupdate_for_task(submit_task),
            in_flight_limit=concurrency_limit_name,
            submit_task=submit_task,
        )
        if deliverables.formats:
            ctx.deliverer = Deliverer(deliverables, storage, sidecars=ctx.previews)
        interruption.on_stop(partial(ctx.stop, interrupt=True))
        # What a killed run left behind: its half-written downloads and its claims.
        swept = await asyncio.to_thread(storage.sweep_staging) + await asyncio.to_thread(ctx.claims.sweep)
        if swept:
            logger.info("removed %d staging file(s) and claim(s) left by runs that died", swept)
        progress = ProgressArtifact(len(runnable), f"Meshes from {manifest} into {output}")
        await progress.start()
        listener = current_progress()  # the terminal's bar under `hy3d run`, else nobody
        listener.start(len(runnable), partial(_spent, ctx))
        saved_durations = await storage.small_io(read_durations, storage, settings.base_url, logger)
        seed_estimator(client.durations, saved_durations, logger)

        finished: dict[int, ItemOutcome] = {}

        async def tracked(index: int, entry: PreparedItem) -> ItemOutcome:
            outcome = finished[index] = await process_item(ctx, entry)
            await progress.advance()
            listener.item_finished(outcome)
            return outcome

        def summarize(items: list[ItemOutcome], stop_reason: str | None) -> RunSummary:
            summary = RunSummary.build(
                manifest=manifest,
                output=output,
                model=model,
                flow_run_id=run_id,
                started_at=started_at,
                items=items,
                problems=problems,
                stop_reason=stop_reason,
                cost_usd=_spent(ctx),
                refund_usd=ctx.refund_usd,
            )
            summary.summary_url = storage.url(RUNS_FOLDER, _summary_name(started_at, run_id))
            return summary

        try:
            with fewer_gc_passes():
                outcomes += await asyncio.gather(*(tracked(i, entry) for i, entry in enumerate(runnable)))
        except BaseException as exc:
            # Cancelled under us (a cancel that is not a signal this run handles): the summary still
            # says what landed and what was not finished, then the cancellation goes on.
            reason = ctx.stop_reason or f"interrupted ({type(exc).__name__})"
            ended = [finished.get(i) or _not_finished(entry, reason) for i, entry in enumerate(runnable)]
            try:
                await _write_summary(storage, summarize(outcomes + ended, reason))
            except Exception as write_error:
                words = storage_error_message(write_error, output) or write_error
                logger.error("could not write the run summary: %s", words)
            raise
        finally:
            listener.finish()
            await asyncio.to_thread(ctx.claims.release_all)
            await storage.small_io(write_durations, storage, client.durations, settings.base_url, logger)

    summary = summarize(outcomes, ctx.stop_reason)
    # Missing thumbnails are filled in only when this run renders them at all (large runs skip that
    # CPU: a later small run, or previews="on", fills them in).
    summary.gallery_url = await publish_gallery(storage, summary, max_backfill=200 if ctx.previews else 0)
    try:
        await _write_summary(storage, summary)
    except OSError as exc:  # a full disk, say: the items' own files and the terminal still tell
        logger.error("could not write the run summary: %s", storage_error_message(exc, output) or exc)
        summary.summary_url = None
    logger.info("%s; summary: %s", summary.headline(), summary.summary_url)
    if summary.cost_line():
        logger.info("%s", summary.cost_line())
    if summary.gallery_url:
        logger.info("gallery: %s", summary.gallery_url)
    for advice in summary.advice:
        logger.warning(advice)
    await publish_run_artifacts(summary)
    if interruption.signum is not None:
        interrupted = RunInterruptedError(summary, interruption.signum)
        return Cancelled(message=str(interrupted), data=interrupted)
    if summary.failed or summary.stop_reason:
        error = RunFailedError(summary)
        return Failed(message=str(error), data=error)
    return Completed(message=summary.headline(), data=summary)
