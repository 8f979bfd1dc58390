"""What a run reports as it goes and when it ends.

- To the Prefect UI, for every run: a progress artifact that advances as items finish, then a table
  of the items and a markdown summary (:class:`ProgressArtifact`, :func:`publish_run_artifacts`).
  Artifact failures are logged, never fail the run.
- To whoever runs the flow in its own process: a listener the flow calls, a no-op by default.
  ``hy3d run`` installs a terminal bar around its run with :func:`reporting_to`; deployments, workers
  and tests get the no-op. A listener that raises is switched off with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from flows.records import ItemOutcome, RunSummary

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
