"""What a run reports as it goes and when it ends.

- To the Prefect UI, for every run: a progress artifact that advances as items finish, then a table
  of the items and a markdown summary (:class:`ProgressArtifact`, :func:`publish_run_artifacts`).
  Artifact failures are logged, never fail the run.
- To whoever runs the flow in its own process: a listener the flow calls, a no-op by default.
  ``hy3d run`` installs a terminal bar around its run with :func:`reporting_to`; deployments, workers
  and tests get the no-op. A listener that raises is switched off with one warning.

Sections: records (what a run writes, and the flows' errors), then progress.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from pydantic import BaseModel, Field

from tasks import __version__
from tasks.storage import utc_now

if TYPE_CHECKING:
    from flows.sharded import ShardedRunSummary

# ==== Records =====================================================================================
#
# What a run writes next to each mesh and under ``DEST/runs/`` (pure data, no I/O), and the flows'
# errors, which carry a run summary.

METADATA_FILE = "metadata.json"
MESH_FILE = "mesh.glb"
RUNS_FOLDER = "runs"
# Row problems printed or logged one by one; the rest are counted in one line (a manifest of 10,000
# identical lines must not print 9,999 "duplicate id" lines). The run summary lists every one.
ROW_PROBLEMS_SHOWN = 20


class ItemStatus(StrEnum):
    completed = "completed"  # mesh landed in this run
    already_done = "already_done"  # a verified mesh for the same content was already there
    failed = "failed"  # the prediction failed (WaveSpeed data.code / error)
    invalid = "invalid"  # rejected before paying: bad manifest row or image
    submit_unknown = "submit_unknown"  # the submit may have been accepted; not resent
    timeout = "timeout"  # still running at the deadline; a re-run resumes it
    error = "error"  # anything else (network, storage, expired results...)
    skipped = "skipped"  # not attempted because the run was stopped (e.g. rejected API key)
    claimed_elsewhere = "claimed_elsewhere"  # another live run on the same output is processing it

    @property
    def landed(self) -> bool:
        return self in (ItemStatus.completed, ItemStatus.already_done)

    @property
    def is_failure(self) -> bool:
        """Did not land in this run and nobody else is landing it."""
        return not self.landed and self is not ItemStatus.claimed_elsewhere


ADVICE: dict[ItemStatus, str] = {
    ItemStatus.submit_unknown: (
        "{n} item(s) were submitted but the answer was lost (a timeout, a gateway error, or the "
        "process was killed while the submit was in flight): WaveSpeed may have accepted and billed "
        "them. They are not resent automatically. Check the predictions in "
        "your WaveSpeed dashboard; to submit them again anyway (billed again if the first was "
        "accepted), re-run with --resubmit-unknown (flow parameter resubmit_unknown=true)."
    ),
    ItemStatus.timeout: (
        "{n} prediction(s) were still running at the deadline. Nothing is lost: re-run the same "
        "manifest into the same output and it resumes polling them without paying again."
    ),
    ItemStatus.failed: (
        "{n} prediction(s) failed on WaveSpeed (see each item's error code). Codes 5000/5003/5004 are "
        "transient: re-run with --retry-failed (flow parameter retry_failed=true) to submit them "
        "again — billed again. 14xx codes are permanent for that input: fix the image first."
    ),
    ItemStatus.error: (
        "{n} item(s) hit an error (network, storage or API). Re-running the same manifest into the "
        "same output retries them; predictions already paid for are resumed, not resubmitted."
    ),
    ItemStatus.invalid: "{n} manifest row(s) were rejected before anything was paid: fix them and re-run.",
    ItemStatus.skipped: (
        "{n} item(s) were not finished because the run stopped early (see stop_reason): re-run the same "
        "manifest into the same output to finish them; predictions already paid for are resumed, not "
        "paid again."
    ),
    ItemStatus.claimed_elsewhere: (
        "{n} item(s) were being processed by another run writing to the same output; that run lands them."
    ),
}

DELIVERABLES_ADVICE = (
    "{n} deliverable(s) (formats beyond mesh.glb) could not be made: each item's metadata.json says why "
    "under deliverables; their meshes landed. Re-running with the same formats tries them again and "
    "pays nothing."
)


def more_row_problems(hidden: int) -> str:
    return f"… and {hidden} more row problems (see the run summary)"


def first_row_problems(problems: Sequence[str], shown: int = ROW_PROBLEMS_SHOWN) -> list[str]:
    """The first ``shown`` problems and, when there are more, one line counting the rest."""
    if len(problems) <= shown:
        return list(problems)
    return [*problems[:shown], more_row_problems(len(problems) - shown)]


def not_landed_lines(items: Iterable[ItemOutcome], shown: int = ROW_PROBLEMS_SHOWN) -> list[str]:
    """``id: status: error`` for each item that did not land, for the terminal: every failure, but
    only the first ``shown`` rejected rows, then one line counting the rest."""
    lines: list[str] = []
    rejected = 0
    for item in items:
        if item.status.landed:
            continue
        if item.status is ItemStatus.invalid:
            rejected += 1
            if rejected > shown:
                continue
        lines.append(f"{item.id}: {item.status.value}: {item.error}")
    if rejected > shown:
        lines.append(more_row_problems(rejected - shown))
    return lines


class ItemOutcome(BaseModel):
    """One manifest row's result, as listed in the run summary."""

    id: str
    row: int
    status: ItemStatus
    source: str
    prediction_id: str | None = None
    mesh: str | None = None
    faces: int | None = None
    seconds: float | None = None
    error: str | None = None
    error_code: int | None = None
    price_usd: float | None = None
    deliverables: dict[str, Any] | None = None  # as in metadata.json (formats beyond mesh.glb)

    def failed_deliverables(self) -> list[str]:
        records = self.deliverables or {}
        return sorted(k for k, record in records.items() if isinstance(record, dict) and "error" in record)


class RunSummary(BaseModel):
    manifest: str
    output: str
    model: str
    flow_run_id: str | None = None
    started_at: str
    finished_at: str
    counts: dict[str, int] = Field(default_factory=dict)
    total: int = 0
    landed: int = 0
    failed: int = 0
    items: list[ItemOutcome] = Field(default_factory=list)
    advice: list[str] = Field(default_factory=list, description="What to do about what did not land.")
    problems: list[str] = Field(default_factory=list, description="Manifest-level warnings.")
    stop_reason: str | None = Field(default=None, description="Why the run stopped early, if it did.")
    cost_usd: float | None = Field(
        default=None,
        description="What this run's new submits were billed (the discounted price when there is one).",
    )
    refund_usd: float | None = Field(
        default=None,
        description="Of that, what WaveSpeed refunds within 3 hours for predictions that failed.",
    )
    deliverables_failed: int = Field(
        default=0, description="Deliverables (formats beyond mesh.glb) that could not be made; meshes kept."
    )
    summary_url: str | None = None
    gallery_url: str | None = None

    @property
    def file_name(self) -> str:
        """Its file under ``DEST/runs/``: when the run started, then its flow run."""
        stamp = self.started_at.replace(":", "").replace("-", "").replace(".", "")
        return f"{stamp}-{self.flow_run_id or 'local'}.json"

    @classmethod
    def build(
        cls,
        *,
        manifest: str,
        output: str,
        model: str,
        flow_run_id: str | None,
        started_at: str,
        items: list[ItemOutcome],
        problems: list[str],
        stop_reason: str | None = None,
        cost_usd: float | None = None,
        refund_usd: float | None = None,
    ) -> RunSummary:
        counts: dict[str, int] = {}
        for item in items:
            counts[item.status.value] = counts.get(item.status.value, 0) + 1
        landed = sum(1 for item in items if item.status.landed)
        failed = sum(1 for item in items if item.status.is_failure)
        advice = [
            text.format(n=counts[status.value]) for status, text in ADVICE.items() if status.value in counts
        ]
        deliverables_failed = sum(len(item.failed_deliverables()) for item in items)
        if deliverables_failed:
            advice.append(DELIVERABLES_ADVICE.format(n=deliverables_failed))
        return cls(
            manifest=manifest,
            output=output,
            model=model,
            flow_run_id=flow_run_id,
            started_at=started_at,
            finished_at=utc_now(),
            counts=counts,
            total=len(items),
            landed=landed,
            failed=failed,
            advice=advice,
            items=sorted(items, key=lambda item: item.row),
            problems=problems,
            stop_reason=stop_reason,
            cost_usd=round(cost_usd, 6) if cost_usd is not None else None,
            refund_usd=round(refund_usd, 6) if refund_usd is not None else None,
            deliverables_failed=deliverables_failed,
        )

    def cost_line(self) -> str | None:
        """What this run was billed and what comes back, for the log and the terminal."""
        if self.cost_usd is None:
            return None
        line = f"cost: ${self.cost_usd:.4f} billed for new predictions"
        if self.refund_usd:
            line += f"; ${self.refund_usd:.4f} of it is refunded within 3 hours (failed predictions)"
        return line

    def headline(self) -> str:
        parts = ", ".join(f"{count} {status}" for status, count in sorted(self.counts.items()))
        return f"{self.landed}/{self.total} meshes landed ({parts or 'nothing to do'})"


def metadata_document(**fields: Any) -> dict[str, Any]:
    """The ``metadata.json`` body: fields in a stable, readable order, tool version stamped."""
    document: dict[str, Any] = {"schema": "prefect-hunyuan3d/metadata/v1"}
    document.update(fields)
    document["tool"] = {"name": "prefect-hunyuan3d", "version": __version__}
    return document


class RunFailedError(Exception):
    """Raised by a direct call of the flow when items did not land; carries the summary."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(summary.stop_reason or summary.headline())
        self.summary = summary


RESUME_HINT = "re-run the same command (same manifest and output) to finish: nothing paid for is paid again"


class RunInterruptedError(RunFailedError):
    """The run was stopped by a signal (Ctrl-C: SIGINT, SIGTERM); carries the summary and the signal."""

    def __init__(self, summary: RunSummary, signum: int) -> None:
        super().__init__(summary)
        self.signum = signum
        self.args = (f"{summary.stop_reason or 'interrupted'}: {summary.headline()}; {RESUME_HINT}",)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.summary, self.signum))


class ChunksFailedError(RunFailedError):
    """Some chunks of a sharded run did not complete; the message names them and their flow run ids."""

    def __init__(self, summary: ShardedRunSummary) -> None:
        super().__init__(summary)
        self.summary: ShardedRunSummary = summary
        failed = summary.failed_chunks
        parts = [summary.stop_reason] if summary.stop_reason else []
        if failed:
            listed = "; ".join(chunk.describe() for chunk in failed)
            parts.append(f"{len(failed)} of {len(summary.chunks)} chunk(s) did not complete: {listed}")
        parts.append(summary.headline())
        self.args = (" | ".join(parts),)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.summary,))


# ==== Progress ====================================================================================

logger = logging.getLogger("hy3d.progress")

# A table of 100k rows helps nobody and weighs on the server: failures first, then landed ones.
MAX_TABLE_ROWS = 1000
# Progress updates are API calls: at most one per interval, and always the last one.
PROGRESS_INTERVAL_S = 1.0


class ProgressArtifact:
    """Advances as items finish. Artifact failures are logged, never fail the run."""

    def __init__(self, total: int, description: str) -> None:
        self.total = max(total, 1)
        self.description = description
        self.done = 0
        self._id: UUID | None = None
        self._last = 0.0

    async def start(self) -> None:
        try:
            self._id = await acreate_progress_artifact(0.0, key="hy3d-progress", description=self.description)
        except Exception as exc:
            logger.warning("could not create the progress artifact: %s", exc)

    async def advance(self, finished: int = 1) -> None:
        self.done += finished
        now = time.monotonic()
        if self._id is None or (now - self._last < PROGRESS_INTERVAL_S and self.done < self.total):
            return
        self._last = now
        try:
            await aupdate_progress_artifact(self._id, progress=round(100.0 * self.done / self.total, 2))
        except Exception as exc:
            logger.warning("could not update the progress artifact: %s", exc)


def table_rows(summary: RunSummary) -> list[dict[str, Any]]:
    ordered = sorted(summary.items, key=lambda item: (item.status.landed, item.row))
    return [
        {
            "id": item.id,
            "status": item.status.value,
            "prediction id": item.prediction_id or "",
            "mesh": item.mesh or "",
            "faces": item.faces if item.faces is not None else "",
            "seconds": item.seconds if item.seconds is not None else "",
            "error": f"[{item.error_code}] {item.error}" if item.error_code else (item.error or ""),
        }
        for item in ordered[:MAX_TABLE_ROWS]
    ]


def summary_markdown(summary: RunSummary) -> str:
    lines = [
        f"# Hunyuan3D meshes: {summary.landed}/{summary.total} landed",
        "",
        f"- manifest: `{summary.manifest}`",
        f"- output: `{summary.output}`",
        f"- model: `{summary.model}`",
        f"- run summary file: `{summary.summary_url}`",
        "",
        "| status | items |",
        "|---|---|",
        *(f"| {status} | {count} |" for status, count in sorted(summary.counts.items())),
    ]
    if summary.stop_reason:
        lines += ["", f"**The run stopped early:** {summary.stop_reason}"]
    failures = [item for item in summary.items if item.status.is_failure]
    if failures:
        lines += ["", "## Did not land", ""]
        lines += [
            f"- `{item.id}` (row {item.row}): {item.status.value} — {item.error}" for item in failures[:50]
        ]
        if len(failures) > 50:
            lines.append(f"- … and {len(failures) - 50} more (see the run summary file)")
    if summary.advice:
        lines += ["", "## How to resume", "", *(f"- {advice}" for advice in summary.advice)]
    return "\n".join(lines) + "\n"


async def publish_run_artifacts(summary: RunSummary) -> None:
    try:
        await acreate_table_artifact(
            table_rows(summary),
            key="hy3d-items",
            description=f"Items of this run (failures first; at most {MAX_TABLE_ROWS} rows).",
        )
        await acreate_markdown_artifact(
            summary_markdown(summary), key="hy3d-summary", description=summary.headline()
        )
    except Exception as exc:
        logger.warning("could not create the run artifacts: %s", exc)


class RunProgress(Protocol):
    """What a run reports as it goes. Called on the flow's event loop: return quickly."""

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        """``total`` items are about to run; ``spent()`` is what the run has been billed so far
        (USD; None when unknown), read whenever the listener wants it."""

    def item_finished(self, outcome: ItemOutcome) -> None:
        """One item is done, whatever its status."""

    def finish(self) -> None:
        """Every item is done (or the run is ending early)."""


class NoProgress:
    """The default: nobody is listening."""

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        pass

    def item_finished(self, outcome: ItemOutcome) -> None:
        pass

    def finish(self) -> None:
        pass


class _Guarded:
    """Calls the listener; the first exception it raises is logged and silences it for good."""

    def __init__(self, listener: RunProgress) -> None:
        self._listener: RunProgress | None = listener

    def _call(self, call: Callable[[RunProgress], None]) -> None:
        if self._listener is None:
            return
        try:
            call(self._listener)
        except Exception as exc:
            logger.warning("progress display switched off: %s: %s", type(exc).__name__, exc)
            self._listener = None

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        self._call(lambda listener: listener.start(total, spent))

    def item_finished(self, outcome: ItemOutcome) -> None:
        self._call(lambda listener: listener.item_finished(outcome))

    def finish(self) -> None:
        self._call(lambda listener: listener.finish())


_current: RunProgress = NoProgress()


def current_progress() -> RunProgress:
    """The installed listener (guarded), for one run."""
    return _Guarded(_current)


@contextlib.contextmanager
def reporting_to(listener: RunProgress) -> Iterator[RunProgress]:
    """Runs of the flow in this process report to ``listener`` until the block exits."""
    global _current
    previous, _current = _current, listener
    try:
        yield listener
    finally:
        _current = previous
