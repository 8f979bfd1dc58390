"""The flow: a manifest of images in, GLB meshes and metadata out, on any fsspec storage."""

# No `from __future__ import annotations` here: flow.serve() pickles the flow, and string
# annotations (Annotated, Field…) could not be resolved in the process that runs it.

import asyncio
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prefect import State, Task, flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed

from flows.manifest import RowProblem
from flows.options import (
    AUTO_PREVIEWS_MAX_ITEMS,
    AUTO_TASK_RUNS_MAX_ITEMS,
    DEFAULT_CONCURRENCY,
    DEFAULT_FORMATS,
    Advanced,
    AdvancedParam,
    ConcurrencyParam,
    FormatsParam,
    Limits,
    LimitsParam,
    ManifestParam,
    MaxCostParam,
    ModelParam,
    OutputParam,
    RunOptions,
    RunSetup,
    check_setup,
    ensure_limits,
    run_settings,
    submit_task_for,
)
from flows.pipeline import (
    Interruption,
    PreparedItem,
    RejectedItem,
    RunContext,
    estimate_cost,
    fewer_gc_passes,
    prepare_items,
    price_items,
    process_item,
    stop_on_signals,
)
from flows.progress import (
    RUNS_FOLDER,
    ItemOutcome,
    ItemStatus,
    ProgressArtifact,
    RunFailedError,
    RunInterruptedError,
    RunSummary,
    current_progress,
    first_row_problems,
    publish_run_artifacts,
)
from tasks.client import WaveSpeedClient, WaveSpeedSettings
from tasks.errors import APIUnreachableError, AuthenticationError, BudgetExceededError, ConfigurationError
from tasks.models import DEFAULT_MODEL
from tasks.polling import read_durations, seed_estimator, write_durations
from tasks.storage import (
    ClaimRegistry,
    PredictionLedger,
    Storage,
    redact_logs,
    storage_error_message,
    utc_now,
)
from tasks.submit import Budget, SubmitCache, SubmitThrottle

# A claim outlives the longest an item can take (wait deadline + download), then others may take over.
CLAIM_LEASE_MARGIN_S = 900.0


@dataclass
class _Run:
    """One run of the flow as it goes: its checked configuration, then what it found and did."""

    options: RunOptions
    setup: RunSetup
    settings: WaveSpeedSettings
    submit_task: Task[..., Any]
    headroom: int
    started_at: str
    flow_run_id: str | None = field(default_factory=flow_run.get_id)
    outcomes: list[ItemOutcome] = field(default_factory=list)  # items that will not run
    problems: list[str] = field(default_factory=list)  # warnings for the summary
    _submit_cache: SubmitCache | None = None

    @property
    def storage(self) -> Storage:
        return self.setup.storage

    async def submit_cache(self) -> SubmitCache:
        """The submit task's records, looked up once and only when needed (a server round trip): for
        the estimate under ``max_cost`` and for runs without task runs."""
        if self._submit_cache is None:
            self._submit_cache = await SubmitCache.of(self.submit_task)
        return self._submit_cache

    def summarize(
        self, items: list[ItemOutcome], ctx: RunContext, stop_reason: str | None = None
    ) -> RunSummary:
        summary = RunSummary.build(
            manifest=self.options.manifest,
            output=self.options.output,
            model=self.options.model,
            flow_run_id=self.flow_run_id,
            started_at=self.started_at,
            items=items,
            problems=self.problems,
            stop_reason=stop_reason or ctx.stop_reason,
            cost_usd=_spent(ctx),
            refund_usd=ctx.refund_usd,
        )
        summary.summary_url = self.storage.url(RUNS_FOLDER, summary.file_name)
        return summary

    async def write_summary(self, summary: RunSummary) -> bool:
        """``DEST/runs/<started>-<flow run>.json``; False (and an error logged) when it cannot be written."""
        try:
            data = summary.model_dump(mode="json")
            await asyncio.to_thread(self.storage.write_json, data, RUNS_FOLDER, summary.file_name)
        except Exception as exc:  # a full disk, say: the items' own files and the terminal still tell
            words = storage_error_message(exc, self.options.output) or exc
            get_run_logger().error("could not write the run summary: %s", words)
            return False
        return True


@flow(name="hunyuan3d-meshes", log_prints=True, persist_result=False)
async def generate_meshes(
    manifest: ManifestParam,
    output: OutputParam,
    model: ModelParam = DEFAULT_MODEL,
    concurrency: ConcurrencyParam = DEFAULT_CONCURRENCY,
    max_cost: MaxCostParam = None,
    formats: FormatsParam = DEFAULT_FORMATS,
    limits: LimitsParam = Limits(),
    advanced: AdvancedParam = Advanced(),
) -> State[Any]:
    """Fan out over the manifest; every item lands as ``DEST/<id>/mesh.glb`` + ``metadata.json``,
    a summary lands under ``DEST/runs/``. The run ends Failed if any item did not land.

    Each parameter is declared in :mod:`flows.options`; ``limits`` and ``advanced`` group the ones
    most runs leave alone (pass them as ``Limits(...)`` / ``Advanced(...)`` or as dicts)."""
    redact_logs()
    options = RunOptions(
        manifest=manifest,
        output=output,
        model=model,
        concurrency=concurrency,
        max_cost=max_cost,
        formats=formats,
        limits=limits,
        advanced=advanced,
    )
    started_at = utc_now()
    try:  # configuration problems end the run before any work, each as one clear message
        run = await _configure(options, started_at)
    except ConfigurationError as exc:
        return Failed(message=str(exc), data=exc)
    return await _run(run)


async def _configure(options: RunOptions, started_at: str) -> _Run:
    settings = await run_settings(options)
    settings.require_api_key()
    setup = await check_setup(options)
    submit_task = await submit_task_for(options.advanced.cache_storage_block)
    headroom = await ensure_limits(options.limits, options.concurrency)
    run = _Run(options, setup, settings, submit_task, headroom, started_at)
    run.problems = [str(warning) for warning in setup.manifest.warnings]
    for warning in first_row_problems(run.problems):
        get_run_logger().warning(warning)
    return run


async def _run(run: _Run) -> State[Any]:
    # With queue headroom the client times each queued prediction's polls from its expected start.
    # From here a first Ctrl-C or SIGTERM stops the run cleanly (RunContext.stop), a second exits.
    slots = run.options.concurrency if run.headroom else None
    async with (
        WaveSpeedClient(run.settings, account_slots=slots) as client,
        stop_on_signals() as interruption,
    ):
        try:  # a wrong key costs one request, not one per item; a wrong API root a few seconds
            await client.check_access()
        except (AuthenticationError, APIUnreachableError) as exc:
            return Failed(message=str(exc), data=exc)
        runnable = await _prepare(run)
        try:
            prices = await _prices(run, client, runnable)
        except (ConfigurationError, BudgetExceededError) as exc:
            return Failed(message=str(exc), data=exc)
        ctx = await _context(run, client, runnable, prices)
        interruption.on_stop(partial(ctx.stop, interrupt=True))
        items = await _process(run, ctx, runnable)
    return await _finish(run, run.summarize(items, ctx), ctx, interruption)


async def _prepare(run: _Run) -> list[PreparedItem]:
    """The items to run; the rejected ones become ``invalid`` outcomes, logged by row and field."""
    manifest = run.setup.manifest
    prepared = await prepare_items(
        manifest.items,
        spec=run.setup.spec,
        inputs=run.options.advanced.inputs,
        api_root=run.settings.base_url,
        storage_options=run.options.advanced.storage_options,
        check_image_urls=run.settings.check_image_urls,
    )
    run.outcomes = _invalid_rows(manifest.errors)
    runnable: list[PreparedItem] = []
    unchecked: list[str] = []
    for entry in prepared:
        if isinstance(entry, RejectedItem):
            problem = RowProblem(entry.item.row, entry.field, entry.message, manifest=manifest.label)
            run.outcomes.append(_invalid(str(problem), entry.item.row, entry.item.id, entry.item.image))
        else:
            runnable.append(entry)
            for name, message in entry.warnings:
                unchecked.append(str(RowProblem(entry.item.row, name, message, manifest=manifest.label)))
    logger = get_run_logger()
    for line in first_row_problems([outcome.error or "" for outcome in run.outcomes]):
        logger.error("%s", line)
    for line in first_row_problems(unchecked):
        logger.warning("%s", line)
    run.problems += unchecked
    return runnable


async def _prices(
    run: _Run, client: WaveSpeedClient, runnable: list[PreparedItem]
) -> dict[str, float | None]:
    """Each item's price; with ``max_cost``, the estimate first: over budget, nothing is submitted."""
    max_cost = run.options.max_cost
    if max_cost is None:
        return (await price_items(client, runnable))[1]
    estimate = await estimate_cost(client, runnable, storage=run.storage, cache=await run.submit_cache())
    for line in estimate.lines():
        get_run_logger().info("estimate: %s", line)
    if estimate.total_usd is None:
        raise ConfigurationError("WaveSpeed did not give a price, so max_cost cannot be kept")
    if estimate.total_usd > max_cost:
        raise BudgetExceededError(
            f"the estimate is ${estimate.total_usd:.4f} for {estimate.to_pay} item(s), over max_cost "
            f"${max_cost:.4f}; nothing was submitted"
        )
    return estimate.price_by_key


async def _context(
    run: _Run, client: WaveSpeedClient, runnable: list[PreparedItem], prices: dict[str, float | None]
) -> RunContext:
    options, limits, advanced = run.options, run.options.limits, run.options.advanced
    as_task_runs = advanced.task_runs == "per-step" or (
        advanced.task_runs == "auto" and len(runnable) <= AUTO_TASK_RUNS_MAX_ITEMS
    )
    previews = advanced.previews == "on" or (
        advanced.previews == "auto" and len(runnable) <= AUTO_PREVIEWS_MAX_ITEMS
    )
    lease_s = (limits.wait_timeout_s or run.settings.wait_timeout_s) + CLAIM_LEASE_MARGIN_S
    shared_rate = limits.rate_limit_name if limits.submits_per_minute else None
    ctx = RunContext(
        client=client,
        storage=run.storage,
        ledger=PredictionLedger(run.storage),
        claims=ClaimRegistry(run.storage, run=run.flow_run_id or uuid.uuid4().hex, lease_s=lease_s),
        storage_options=advanced.storage_options,
        concurrency=options.concurrency,
        headroom=run.headroom,
        wait_timeout_s=limits.wait_timeout_s,
        logger=get_run_logger(),
        manifest=options.manifest,
        flow_run_id=run.flow_run_id,
        retry_failed=limits.retry_failed,
        resubmit_unknown=limits.resubmit_unknown,
        throttle=SubmitThrottle(limits.submits_per_minute, shared_rate, Budget(options.max_cost, prices)),
        prices=prices,
        task_runs=as_task_runs,
        previews=previews,
        submit_cache=None if as_task_runs else await run.submit_cache(),
        in_flight_limit=limits.concurrency_limit_name,
        submit_task=run.submit_task,
    )
    if run.setup.deliverables.formats:
        from flows.deliver import Deliverer  # formats beyond mesh.glb: their libraries only when asked for

        ctx.deliverer = Deliverer(run.setup.deliverables, run.storage, sidecars=ctx.previews)
    return ctx


async def _process(run: _Run, ctx: RunContext, runnable: list[PreparedItem]) -> list[ItemOutcome]:
    """Every runnable item through the pipeline, with progress shown; the outcomes of all items.
    Cancelled under us (a cancel that is not a signal this run handles), the summary still says what
    landed and what was not finished, then the cancellation goes on."""
    storage, logger = run.storage, ctx.logger
    # What a killed run left behind: its half-written downloads and its claims.
    swept = await asyncio.to_thread(storage.sweep_staging) + await asyncio.to_thread(ctx.claims.sweep)
    if swept:
        logger.info("removed %d staging file(s) and claim(s) left by runs that died", swept)
    artifact = ProgressArtifact(
        len(runnable), f"Meshes from {run.options.manifest} into {run.options.output}"
    )
    await artifact.start()
    listener = current_progress()  # the terminal's bar under `hy3d run`, else nobody
    listener.start(len(runnable), partial(_spent, ctx))
    api_root = run.settings.base_url
    seed_estimator(
        ctx.client.durations, await storage.small_io(read_durations, storage, api_root, logger), logger
    )
    finished: dict[int, ItemOutcome] = {}

    async def tracked(index: int, entry: PreparedItem) -> ItemOutcome:
        outcome = finished[index] = await process_item(ctx, entry)
        await artifact.advance()
        listener.item_finished(outcome)
        return outcome

    try:
        with fewer_gc_passes():
            return run.outcomes + await asyncio.gather(
                *(tracked(i, entry) for i, entry in enumerate(runnable))
            )
    except BaseException as exc:
        reason = ctx.stop_reason or f"interrupted ({type(exc).__name__})"
        ended = [finished.get(i) or _not_finished(entry, reason) for i, entry in enumerate(runnable)]
        await run.write_summary(run.summarize(run.outcomes + ended, ctx, reason))
        raise
    finally:
        listener.finish()
        await asyncio.to_thread(ctx.claims.release_all)
        await storage.small_io(write_durations, storage, ctx.client.durations, api_root, logger)


async def _finish(run: _Run, summary: RunSummary, ctx: RunContext, interruption: Interruption) -> State[Any]:
    """Gallery, summary file, log lines and artifacts; the flow's final state."""
    # Missing thumbnails are filled in only when this run renders them at all (large runs skip that
    # CPU: a later small run, or previews="on", fills them in).
    from flows.gallery import publish_gallery  # numpy and trimesh: not before the first submit

    summary.gallery_url = await publish_gallery(run.storage, summary, max_backfill=200 if ctx.previews else 0)
    if not await run.write_summary(summary):
        summary.summary_url = None
    logger = get_run_logger()
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


def _invalid(message: str, row: int, item_id: str, source: str) -> ItemOutcome:
    return ItemOutcome(id=item_id, row=row, status=ItemStatus.invalid, source=source, error=message)


def _invalid_rows(errors: list[RowProblem]) -> list[ItemOutcome]:
    """One invalid item per rejected row, however many problems the row has."""
    by_row: dict[int, list[str]] = {}
    ids: dict[int, str] = {}
    for error in errors:
        by_row.setdefault(error.row, []).append(str(error))
        ids[error.row] = error.id or f"row-{error.row}"
    return [_invalid("; ".join(messages), row, ids[row], "") for row, messages in by_row.items()]


def _not_finished(entry: PreparedItem, reason: str) -> ItemOutcome:
    item = entry.item
    return ItemOutcome(
        id=item.id,
        row=item.row,
        status=ItemStatus.skipped,
        source=item.image,
        error=f"not finished: {reason}",
    )


def _spent(ctx: RunContext) -> float | None:
    """What the run's new submits have been billed so far."""
    return ctx.throttle.budget.spent if ctx.throttle and ctx.throttle.budget else None
