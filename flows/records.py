"""What a run writes next to each mesh and under ``DEST/runs/`` (pure data, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from tasks import __version__

METADATA_FILE = "metadata.json"
MESH_FILE = "mesh.glb"
RUNS_FOLDER = "runs"


class ItemStatus(StrEnum):
    completed = "completed"  # mesh landed in this run
    already_done = "already_done"  # a verified mesh for the same content was already there
    failed = "failed"  # the prediction failed (WaveSpeed data.code / error)
    invalid = "invalid"  # rejected before paying: bad manifest row or image
    submit_unknown = "submit_unknown"  # the submit may have been accepted; not resent
    timeout = "timeout"  # still running at the deadline; a re-run resumes it
    error = "error"  # anything else (network, storage, expired results...)
    skipped = "skipped"  # not attempted because the run was stopped (e.g. rejected API key)

    @property
    def landed(self) -> bool:
        return self in (ItemStatus.completed, ItemStatus.already_done)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    problems: list[str] = Field(default_factory=list, description="Manifest-level warnings.")
    stop_reason: str | None = Field(default=None, description="Why the run stopped early, if it did.")
    summary_url: str | None = None

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
    ) -> RunSummary:
        counts: dict[str, int] = {}
        for item in items:
            counts[item.status.value] = counts.get(item.status.value, 0) + 1
        landed = sum(1 for item in items if item.status.landed)
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
            failed=len(items) - landed,
            items=sorted(items, key=lambda item: item.row),
            problems=problems,
            stop_reason=stop_reason,
        )

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
