"""Scale out: one manifest, many flow runs of the ``hunyuan3d-meshes`` deployment on a work pool.

The parent flow cuts the manifest's rows into chunks (sorted by row, every ``chunk_size`` rows: the
same chunks on every re-run of an unchanged manifest) and starts one flow run of a deployment per chunk
(``arun_deployment(timeout=0)``, linked as subflow runs). Each chunk gets the run's options with
its rows as ``advanced.rows`` of ``generate_meshes``: the child reads the same manifest, so image
paths resolve and ids are the same as in a single run, and needs no new file. Whatever workers poll
the deployment's work pool, on however many hosts, share the chunks. The parent then waits for every
chunk, reads each chunk's run summary from ``DEST/runs/`` (by flow run id), and writes one summary
for the whole run.

Never paying twice holds across chunks for the same reasons it holds across runs (content-keyed
submit cache, the ledger and claims in ``DEST/.hy3d/``), and the in-flight cap and the submit rate are
Prefect global concurrency limits that every chunk shares (created here if missing).

A chunk whose worker died leaves its flow run "Running" on the server forever. The parent watches the
heartbeats of the workers running its chunks (the ``prefect.worker.name`` label Prefect gives each flow
run): a worker silent for three heartbeat intervals is taken for dead, its chunks' runs are set
Crashed, and the parent ends Failed naming them. Re-running the parent starts fresh chunk runs, which
skip what landed and resume what was paid for; it first removes claims held by runs that are over.
"""

# No `from __future__ import annotations`: deployments resolve the flow's annotations at load time.

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import State, flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as current_run
from prefect.states import Cancelled, Cancelling, Completed, Crashed, Failed
from pydantic import BaseModel, Field, ValidationError

from flows.manifest import Manifest
from flows.options import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FORMATS,
    Advanced,
    AdvancedParam,
    ConcurrencyParam,
    FormatsParam,
    ManifestParam,
    ModelParam,
    OutputParam,
    RunOptions,
    RunSetup,
    ShardedLimits,
    ShardedLimitsParam,
    ShardedRunOptions,
    Sharding,
    ShardingParam,
    check_setup,
    ensure_limits,
    shared_limits,
)
from flows.pipeline import Interruption, stop_on_signals
from flows.progress import (
    RUNS_FOLDER,
    ChunksFailedError,
    ItemOutcome,
    ItemStatus,
    RunInterruptedError,
    RunSummary,
    publish_run_artifacts,
)
from tasks.errors import ConfigurationError
from tasks.models import DEFAULT_MODEL
from tasks.storage import STATE_FOLDER, Storage, redact_logs, utc_now

WORKER_NAME_LABEL = "prefect.worker.name"
WORK_POOL_LABEL = "prefect.work-pool.name"
# Prefect's own foreman takes a worker for offline after 3 missed heartbeats; so does the parent, but
# never after less than 10 s: a busy worker (spawning flow runs on a loaded host) skips beats for seconds.
HEARTBEAT_MULTIPLE = 3
MIN_SILENCE_S = 10.0
DEFAULT_HEARTBEAT_S = 30
PAGE = 200  # the server's default page size


@dataclass(frozen=True)
class Chunk:
    """Rows of the manifest handed to one flow run. ``index`` is 1-based."""

    index: int
    rows: tuple[int, ...]
    note: str = ""

    @property
    def label(self) -> str:
        span = f"row {self.rows[0]}" if len(self.rows) == 1 else f"rows {self.rows[0]}-{self.rows[-1]}"
        return f"chunk {self.index} ({span}{', ' + self.note if self.note else ''})"


def plan_chunks(rows: Iterable[int], chunk_size: int) -> list[Chunk]:
    """Sorted rows cut every ``chunk_size``: the same manifest gives the same chunks on every run."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    ordered = sorted(set(rows))
    return [
        Chunk(index=number, rows=tuple(ordered[start : start + chunk_size]))
        for number, start in enumerate(range(0, len(ordered), chunk_size), start=1)
    ]


def manifest_rows(loaded: Manifest) -> dict[int, tuple[str, str]]:
    """Every row a run reports on (valid or rejected) -> (id, source) as a run summary names them."""
    rows = {item.row: (item.id, item.image) for item in loaded.items}
    for problem in loaded.errors:
        rows.setdefault(problem.row, (problem.id or f"row-{problem.row}", ""))
    return rows


class ChunkResult(BaseModel):
    """How one chunk's flow run ended, as listed in the sharded run's summary."""

    index: int
    first_row: int
    last_row: int
    rows: int
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    worker: str | None = None
    state: str = Field(description="The flow run's final state name (Completed, Failed, Crashed...).")
    message: str | None = None
    headline: str | None = Field(default=None, description="The chunk's own run summary headline.")
    summary_url: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "Completed"

    def describe(self) -> str:
        span = f"rows {self.first_row}-{self.last_row}" if self.rows > 1 else f"row {self.first_row}"
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "no flow run"
        if self.flow_run_name:
            run += f" '{self.flow_run_name}'"
        if self.worker:
            run += f" on {self.worker}"
        what = self.headline or self.message or ""
        return f"chunk {self.index} ({span}, {run}): {self.state}{': ' + what if what else ''}"


class ShardedRunSummary(RunSummary):
    """A run summary over all chunks, plus how each chunk's flow run ended."""

    deployment: str
    chunk_size: int
    chunks: list[ChunkResult] = Field(default_factory=list)

    @property
    def failed_chunks(self) -> list[ChunkResult]:
        return [chunk for chunk in self.chunks if not chunk.ok]


@dataclass
class _Watched:
    chunk: Chunk
    run: FlowRun
    started_at: float | None = None  # monotonic, when first seen Pending/Running


@dataclass
class _WorkerWatch:
    """Which workers are alive, from their heartbeats as the server records them. Silence is measured
    on this process's clock (a heartbeat time that stops changing), so clock skew does not matter."""

    seen: dict[tuple[str, str], tuple[datetime | None, float]] = field(default_factory=dict)
    status: dict[tuple[str, str], str] = field(default_factory=dict)
    interval: dict[tuple[str, str], float] = field(default_factory=dict)
    listed: set[tuple[str, str]] = field(default_factory=set)

    async def refresh(self, client: PrefectClient, pools: set[str]) -> None:
        self.listed = set()
        now = time.monotonic()
        for pool in pools:
            offset = 0
            while True:
                workers = await client.read_workers_for_work_pool(pool, offset=offset, limit=PAGE)
                for worker in workers:
                    key = (pool, worker.name)
                    self.listed.add(key)
                    previous = self.seen.get(key)
                    if previous is None or previous[0] != worker.last_heartbeat_time:
                        self.seen[key] = (worker.last_heartbeat_time, now)
                    self.status[key] = worker.status.value
                    self.interval[key] = float(worker.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_S)
                if len(workers) < PAGE:
                    break
                offset += PAGE

    def dead(self, pool: str, name: str) -> str | None:
        """Why the worker is taken for dead, or None."""
        key = (pool, name)
        if key not in self.seen:
            return None  # not listed yet: give it the benefit of the doubt
        if key not in self.listed:
            return f"worker {name!r} is no longer registered in work pool {pool!r}"
        if self.status.get(key) == WorkerStatus.OFFLINE.value:
            return f"worker {name!r} is offline"
        silence = time.monotonic() - self.seen[key][1]
        allowed = max(HEARTBEAT_MULTIPLE * self.interval[key], MIN_SILENCE_S)
        if silence > allowed:
            expected = self.interval[key]
            return f"worker {name!r} sent no heartbeat for {silence:.0f} s (expected every {expected:.0f} s)"
        return None


async def _read_runs(client: PrefectClient, ids: Sequence[UUID]) -> list[FlowRun]:
    runs: list[FlowRun] = []
    for start in range(0, len(ids), PAGE):
        batch = list(ids[start : start + PAGE])
        runs += await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)), limit=len(batch)
        )
    return runs


async def release_claims_of_finished_runs(storage: Storage, client: PrefectClient) -> int:
    """Remove claims held by flow runs that are over (Completed, Failed, Crashed, Cancelled).

    A run on another host that died keeps its claims until their lease runs out (the wait timeout +
    15 min); the server knows sooner that the run is over, e.g. once the parent set it Crashed.
    """
    folder = storage.path(STATE_FOLDER, "claims")
    try:
        paths = [str(path) for path in storage.fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return 0
    holders: dict[str, UUID] = {}
    for path in paths:
        if not path.endswith(".json"):
            continue
        try:
            with storage.fs.open(path, "rb") as handle:
                holders[path] = UUID(str(json.loads(handle.read())["run"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # being written, or not a flow run's: the claim's own rules decide
    finished = {
        run.id
        for run in await _read_runs(client, sorted(set(holders.values())))
        if run.state is not None and run.state.is_final()
    }
    removed = 0
    for path, run_id in holders.items():
        if run_id in finished:
            try:
                storage.fs.rm_file(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _read_chunk_summary(storage: Storage, run_id: UUID) -> RunSummary | None:
    pattern = storage.path(RUNS_FOLDER, f"*-{run_id}.json")
    for path in sorted(str(found) for found in storage.fs.glob(pattern)):
        try:
            with storage.fs.open(path, "rb") as handle:
                return RunSummary.model_validate(json.loads(handle.read()))
        except (OSError, ValueError, ValidationError):
            continue
    return None


@dataclass
class _Outcome:
    chunk: Chunk
    result: ChunkResult
    summary: RunSummary | None = None


class _Shard:
    """Dispatch chunks to the deployment and wait for them; one per parent run."""

    def __init__(
        self,
        client: PrefectClient,
        storage: Storage,
        sharding: Sharding,
        parameters: dict[str, Any],
        run_name: str,
    ) -> None:
        self.client = client
        self.storage = storage
        self.deployment = sharding.deployment
        self.parameters = parameters
        self.poll_interval_s = sharding.poll_interval_s
        self.chunk_timeout_s = sharding.chunk_timeout_s
        self.run_name = run_name
        self.workers = _WorkerWatch()
        self.logger = get_run_logger()
        self.stop_reason: str | None = None
        self._cancelled = False
        self._wake = asyncio.Event()

    def stop(self, reason: str) -> None:
        """Ctrl-C or SIGTERM: no more chunks are scheduled, those not finished are cancelled (a
        running one stops as an interrupted run does: what it paid for is kept, its summary written)
        and the parent waits for them to end."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.logger.error(
                "Stopping the run: %s; cancelling the chunks not finished and waiting for them to stop "
                "(a second signal exits at once)",
                reason,
            )
            self._wake.set()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
        self._wake.clear()

    async def _cancel(self, watched: dict[UUID, "_Watched"]) -> None:
        self._cancelled = True
        for entry in watched.values():
            state = entry.run.state
            if state is not None and state.is_final():
                continue
            # Not started yet: cancelled outright. Started: Cancelling, and its worker stops it.
            new: State[Any] = (
                Cancelled(message=self.stop_reason)
                if state is None or state.type is StateType.SCHEDULED
                else Cancelling(message=self.stop_reason)
            )
            try:
                await self.client.set_flow_run_state(entry.run.id, new, force=True)
            except Exception as exc:
                self.logger.warning("could not cancel flow run %s: %s", entry.run.id, exc)

    def _result(self, chunk: Chunk, run: FlowRun | None, state: str, message: str | None) -> ChunkResult:
        return ChunkResult(
            index=chunk.index,
            first_row=chunk.rows[0],
            last_row=chunk.rows[-1],
            rows=len(chunk.rows),
            flow_run_id=str(run.id) if run else None,
            flow_run_name=run.name if run else None,
            worker=run.labels.get(WORKER_NAME_LABEL) if run else None,
            state=state,
            message=message,
            note=chunk.note,
        )

    async def run(self, chunks: list[Chunk], total: int) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        watched: dict[UUID, _Watched] = {}
        width = len(str(total))
        for chunk in chunks:
            if self.stop_reason is not None:
                message = f"not scheduled: {self.stop_reason}"
                outcomes.append(_Outcome(chunk, self._result(chunk, None, "Cancelled", message)))
                continue
            try:
                run = await arun_deployment(
                    self.deployment,
                    client=self.client,
                    parameters=_with_rows(self.parameters, chunk.rows),
                    timeout=0,
                    as_subflow=True,
                    flow_run_name=f"{self.run_name}-chunk-{chunk.index:0{width}d}-of-{total}",
                    tags=["hy3d-chunk"],
                )
            except Exception as exc:  # the server refusing one chunk must not lose the others
                message = f"could not be scheduled: {type(exc).__name__}: {exc}"
                self.logger.error("%s %s", chunk.label, message)
                outcomes.append(_Outcome(chunk, self._result(chunk, None, "NotScheduled", message)))
                continue
            watched[run.id] = _Watched(chunk, run)
            self.logger.info("%s -> flow run %s (%s)", chunk.label, run.name, run.id)
        while watched:
            await self._pause()
            if self.stop_reason is not None and not self._cancelled:
                await self._cancel(watched)
            outcomes += await self._poll(watched)
        return outcomes

    async def _poll(self, watched: dict[UUID, _Watched]) -> list[_Outcome]:
        runs = await _read_runs(self.client, list(watched))
        pools = {pool for run in runs if (pool := run.labels.get(WORK_POOL_LABEL) or run.work_pool_name)}
        if any(run.labels.get(WORKER_NAME_LABEL) for run in runs):
            await self.workers.refresh(self.client, {str(pool) for pool in pools})
        finished: list[_Outcome] = []
        now = time.monotonic()
        for run in runs:
            entry = watched[run.id]
            entry.run = run
            state = run.state
            if state is None:
                continue
            if state.is_final():
                finished.append(await self._finish(entry.chunk, run, state))
                del watched[run.id]
                continue
            if state.type in (StateType.PENDING, StateType.RUNNING) and entry.started_at is None:
                entry.started_at = now
            reason = self._given_up(run, entry, now)
            if reason is not None:
                crashed: State[Any] = Crashed(message=f"{reason}; re-run the sharded flow to finish its rows")
                try:
                    await self.client.set_flow_run_state(run.id, crashed, force=True)
                except Exception as exc:
                    self.logger.warning("could not set flow run %s Crashed: %s", run.id, exc)
                self.logger.error("%s (flow run %s) given up: %s", entry.chunk.label, run.id, reason)
                finished.append(await self._finish(entry.chunk, run, crashed))
                del watched[run.id]
        return finished

    def _given_up(self, run: FlowRun, entry: _Watched, now: float) -> str | None:
        worker = run.labels.get(WORKER_NAME_LABEL)
        pool = run.labels.get(WORK_POOL_LABEL) or run.work_pool_name
        if worker and pool and entry.started_at is not None:
            reason = self.workers.dead(str(pool), str(worker))
            if reason is not None:
                return f"its {reason}"
        started = entry.started_at
        if self.chunk_timeout_s is not None and started is not None and now - started > self.chunk_timeout_s:
            return f"not finished {self.chunk_timeout_s:.0f} s after it started (chunk_timeout_s)"
        return None

    async def _finish(self, chunk: Chunk, run: FlowRun, state: State[Any]) -> _Outcome:
        summary = await asyncio.to_thread(_read_chunk_summary, self.storage, run.id)
        result = self._result(chunk, run, state.name or state.type.value, state.message)
        if summary is not None:
            result.headline = summary.headline()
            result.summary_url = summary.summary_url
        if run.parent_task_run_id is not None:  # the parent's task run standing for this chunk
            link: State[Any] = Completed() if result.ok else Failed(message=result.describe())
            try:
                await self.client.set_task_run_state(run.parent_task_run_id, link, force=True)
            except Exception as exc:
                self.logger.debug("could not update the task run of %s: %s", chunk.label, exc)
        log = self.logger.info if result.ok else self.logger.error
        log("%s", result.describe())
        return _Outcome(chunk, result, summary)


def _with_rows(parameters: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """A chunk's parameters: the run's, with only its rows."""
    return {**parameters, "advanced": {**parameters["advanced"], "rows": list(rows)}}


def _aggregate(
    outcomes: list[_Outcome], expected: dict[int, tuple[str, str]]
) -> tuple[list[ItemOutcome], list[str], str | None, float | None, float | None]:
    """Items by row (a later outcome for the same row wins), problems, stop reason, cost and refund."""
    items: dict[int, ItemOutcome] = {}
    problems: list[str] = []
    stop_reason: str | None = None
    cost: float | None = None
    refund: float | None = None
    for outcome in outcomes:
        chunk, result, summary = outcome.chunk, outcome.result, outcome.summary
        if summary is not None:
            for item in summary.items:
                items[item.row] = item
            problems += [problem for problem in summary.problems if problem not in problems]
            if summary.stop_reason and stop_reason is None:
                stop_reason = f"chunk {chunk.index}: {summary.stop_reason}"
            if summary.cost_usd is not None:
                cost = (cost or 0.0) + summary.cost_usd
            if summary.refund_usd is not None:
                refund = (refund or 0.0) + summary.refund_usd
            continue
        if result.state == "Failed" and stop_reason is None:
            # Failed before it processed anything (configuration on the worker: key, storage...).
            stop_reason = f"{result.describe()}"
        for row in chunk.rows:
            item_id, source = expected.get(row, (f"row-{row}", ""))
            items[row] = ItemOutcome(
                id=item_id,
                row=row,
                # Cancelled before it reported anything (the parent was interrupted): not started.
                status=ItemStatus.skipped if result.state == "Cancelled" else ItemStatus.error,
                source=source,
                error=f"{result.describe()}; re-run to finish it (what was paid for is resumed)",
            )
    missing = sorted(set(expected) - set(items))
    if missing:
        shown = ", ".join(str(row) for row in missing[:20]) + (" ..." if len(missing) > 20 else "")
        problems.append(
            f"{len(missing)} row(s) were not reported by any chunk ({shown}): the manifest changed while "
            "the run was going; run again"
        )
    return [items[row] for row in sorted(items)], problems, stop_reason, cost, refund


def _chunks_markdown(summary: ShardedRunSummary) -> str:
    lines = [
        f"# {summary.headline()}",
        "",
        f"Deployment `{summary.deployment}`, {len(summary.chunks)} chunk(s) of up to {summary.chunk_size} "
        "rows.",
        "",
        "| chunk | rows | flow run | worker | state | result |",
        "|---|---|---|---|---|---|",
    ]
    for chunk in summary.chunks:
        rows = f"{chunk.first_row}-{chunk.last_row}"
        result = (chunk.headline or chunk.message or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {chunk.index}{' ' + chunk.note if chunk.note else ''} | {rows} | {chunk.flow_run_id or '-'} "
            f"| {chunk.worker or '-'} | {chunk.state} | {result} |"
        )
    return "\n".join(lines)


@flow(name="hunyuan3d-meshes-sharded", log_prints=True, persist_result=False)
async def generate_meshes_sharded(
    manifest: ManifestParam,
    output: OutputParam,
    model: ModelParam = DEFAULT_MODEL,
    concurrency: ConcurrencyParam = DEFAULT_CONCURRENCY,
    formats: FormatsParam = DEFAULT_FORMATS,
    sharding: ShardingParam = Sharding(),
    limits: ShardedLimitsParam = ShardedLimits(),
    advanced: AdvancedParam = Advanced(),
) -> State[Any]:
    """Shard the manifest into chunks, run each chunk as a flow run of ``sharding.deployment`` on its
    work pool, wait for all of them and write one summary under ``DEST/runs/``. Ends Failed naming the
    chunks (and their flow run ids) that did not complete.

    Each parameter is declared in :mod:`flows.options`, as for ``hunyuan3d-meshes``: every chunk gets
    this run's options with its own rows. Every worker needs what the formats need (the extra
    prefect-hunyuan3d[formats] for usdz, gltfpack for web)."""
    redact_logs()
    options = ShardedRunOptions(
        manifest=manifest,
        output=output,
        model=model,
        concurrency=concurrency,
        formats=formats,
        sharding=sharding,
        limits=shared_limits(limits),
        advanced=advanced,
    )
    started_at = utc_now()
    try:  # the parent's host is checked like the workers': a problem is one line before any chunk
        setup = await check_setup(options, check_exists=False)  # the chunks check the images
        await _check_deployment(options.sharding.deployment)
        await ensure_limits(options.limits, options.concurrency)
    except ConfigurationError as exc:
        return Failed(message=str(exc), data=exc)
    async with get_client() as client, stop_on_signals() as interruption:
        shard, outcomes = await _run_chunks(client, options, setup, interruption)
        interrupted = interruption.signum
    summary = _summarize(options, setup, started_at, shard, outcomes)
    await asyncio.to_thread(_write_summary, setup.storage, summary)
    get_run_logger().info("%s; summary: %s", summary.headline(), summary.summary_url)
    await publish_run_artifacts(summary)
    try:
        await acreate_markdown_artifact(
            _chunks_markdown(summary), key="hy3d-chunks", description="Chunks and their flow runs."
        )
    except Exception as exc:
        get_run_logger().warning("could not create the chunks artifact: %s", exc)
    if interrupted is not None:
        stopped = RunInterruptedError(summary, interrupted)
        return Cancelled(message=str(stopped), data=stopped)
    if summary.failed or summary.stop_reason or summary.failed_chunks:
        error = ChunksFailedError(summary)
        return Failed(message=str(error), data=error)
    return Completed(message=summary.headline(), data=summary)


async def _check_deployment(deployment: str) -> None:
    """The deployment exists and takes this version's parameters."""
    async with get_client() as client:
        try:
            target = await client.read_deployment_by_name(deployment)
        except (ObjectNotFound, ValueError) as exc:
            raise ConfigurationError(
                f"deployment {deployment!r} not found on the Prefect server (deploy it with "
                f"`prefect --no-prompt deploy --all`): {exc}"
            ) from exc
    accepted = (target.parameter_openapi_schema or {}).get("properties") or {}
    missing = sorted(set(RunOptions.model_fields) - set(accepted))
    if accepted and missing:  # an empty schema (a deployment made without one) is not checked
        raise ConfigurationError(
            f"deployment {deployment!r} does not take a {missing[0]!r} parameter (deployed from an older "
            "checkout?): deploy it again with `prefect --no-prompt deploy --all`"
        )


def _chunk_parameters(options: ShardedRunOptions) -> dict[str, Any]:
    """What every chunk's flow run gets (its rows are added per chunk)."""
    chunk = RunOptions.model_validate(options.model_dump(include=set(RunOptions.model_fields)))
    return chunk.model_dump(mode="json")


async def _run_chunks(
    client: PrefectClient, options: ShardedRunOptions, setup: RunSetup, interruption: Interruption
) -> tuple["_Shard", list[_Outcome]]:
    """Schedule every chunk and wait for all of them; rows claimed by another chunk run once more."""
    logger = get_run_logger()
    expected = manifest_rows(setup.manifest)
    sharding = options.sharding
    chunks = plan_chunks(expected, sharding.chunk_size)
    logger.info(
        "%d row(s) of %s in %d chunk(s) of up to %d, on deployment %s",
        len(expected),
        options.manifest,
        len(chunks),
        sharding.chunk_size,
        sharding.deployment,
    )
    released = await release_claims_of_finished_runs(setup.storage, client)
    if released:
        logger.info("removed %d claim(s) held by flow runs that are over", released)
    shard = _Shard(
        client, setup.storage, sharding, _chunk_parameters(options), current_run.get_name() or "hy3d"
    )
    interruption.on_stop(shard.stop)
    outcomes = await shard.run(chunks, len(chunks))
    # Two chunks holding the same image under different ids: one paid, the other saw the claim.
    # Now that every chunk is over, those rows are run once more; they resume, paying nothing.
    claimed = sorted(
        item.row
        for outcome in outcomes
        if outcome.summary is not None
        for item in outcome.summary.items
        if item.status is ItemStatus.claimed_elsewhere
    )
    if claimed and shard.stop_reason is None:
        again = Chunk(index=len(chunks) + 1, rows=tuple(claimed), note="rows claimed by another chunk")
        logger.info("%d row(s) were claimed by another chunk; running them again", len(claimed))
        outcomes += await shard.run([again], len(chunks) + 1)
    return shard, outcomes


def _summarize(
    options: ShardedRunOptions, setup: RunSetup, started_at: str, shard: "_Shard", outcomes: list[_Outcome]
) -> "ShardedRunSummary":
    expected = manifest_rows(setup.manifest)
    items, problems, stop_reason, cost, refund = _aggregate(outcomes, expected)
    warnings = [str(warning) for warning in setup.manifest.warnings]
    base = RunSummary.build(
        manifest=options.manifest,
        output=options.output,
        model=options.model,
        flow_run_id=current_run.get_id(),
        started_at=started_at,
        items=items,
        problems=problems + [warning for warning in warnings if warning not in problems],
        stop_reason=shard.stop_reason or stop_reason,
        cost_usd=cost,
        refund_usd=refund,
    )
    summary = ShardedRunSummary(
        **base.model_dump(),
        deployment=options.sharding.deployment,
        chunk_size=options.sharding.chunk_size,
        chunks=sorted((outcome.result for outcome in outcomes), key=lambda result: result.index),
    )
    summary.summary_url = setup.storage.url(RUNS_FOLDER, summary.file_name)
    return summary


def _write_summary(storage: Storage, summary: RunSummary) -> None:
    """``DEST/runs/<started>-<flow run>.json``."""
    storage.write_json(summary.model_dump(mode="json"), RUNS_FOLDER, summary.file_name)
