"""What was paid for, kept in the output storage: ``DEST/.hy3d/predictions/<content key>.json``.

Write-ahead: an intent is recorded just before a submit is sent, replaced by the prediction id the
moment the submit is accepted — before any waiting — so a run killed at any point can be re-run and
resume polling the predictions it already paid for. A run killed while a submit was in flight leaves
the intent behind: that submit may have been accepted, so the re-run does not resend it blindly.
Prefect's cache record only exists once the submit task completes, and lives in result storage;
this ledger lives next to the meshes, so whoever can write the output knows what was bought for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tasks.storage import STATE_FOLDER, Storage

RETENTION = timedelta(days=7)  # WaveSpeed deletes predictions and outputs after 7 days


class LedgerEntry(BaseModel):
    content_key: str
    state: Literal["submitting", "submitted", "unknown"]
    prediction_id: str | None = None
    model: str
    api_root: str
    recorded_at: str
    reason: str | None = None  # for "unknown": why the outcome of the submit is not known
    inputs: dict[str, Any] = {}

    def age(self, now: datetime | None = None) -> timedelta:
        recorded = datetime.fromisoformat(self.recorded_at)
        return (now or datetime.now(UTC)) - recorded

    @property
    def expired(self) -> bool:
        return self.age() >= RETENTION


class PredictionLedger:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _parts(self, content_key: str) -> tuple[str, ...]:
        return (STATE_FOLDER, "predictions", f"{content_key}.json")

    def read(self, content_key: str) -> LedgerEntry | None:
        raw = self.storage.read_json(*self._parts(content_key))
        if raw is None:
            return None
        try:
            return LedgerEntry.model_validate(raw)
        except ValidationError:
            return None

    def _record(self, content_key: str, model: str, api_root: str, **details: Any) -> LedgerEntry:
        entry = LedgerEntry(
            content_key=content_key,
            model=model,
            api_root=api_root,
            recorded_at=datetime.now(UTC).isoformat(),
            **details,
        )
        self.storage.write_json(entry.model_dump(mode="json"), *self._parts(content_key))
        return entry

    def record_intent(self, content_key: str, model: str, api_root: str) -> LedgerEntry:
        return self._record(content_key, model, api_root, state="submitting")

    def forget(self, content_key: str) -> None:
        """The submit certainly was not accepted: nothing to remember."""
        path = self.storage.path(*self._parts(content_key))
        if self.storage.fs.exists(path):
            self.storage.fs.rm_file(path)

    def record_submitted(
        self, content_key: str, prediction_id: str, model: str, api_root: str, inputs: dict[str, Any]
    ) -> LedgerEntry:
        return self._record(
            content_key, model, api_root, state="submitted", prediction_id=prediction_id, inputs=inputs
        )

    def record_unknown(self, content_key: str, model: str, api_root: str, reason: str) -> LedgerEntry:
        return self._record(content_key, model, api_root, state="unknown", reason=reason)
