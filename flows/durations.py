"""Processing times carried from one run to the next: ``DEST/.hy3d/durations.json``.

A run learns how long each model's predictions take from the ones it sees complete
(:class:`tasks.polling.DurationEstimator`), and until it knows three its first wave starts cold:
four scouts poll early and the rest wait for them. A nightly run into the same output would learn
the same thing again every night. Instead the last run's durations seed the next run's plan; the
run's own replace them as soon as three are known. Durations older than :data:`MAX_AGE` are not
used (WaveSpeed's speed changes; a week is also how long its results live).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

from flows.records import utc_now
from tasks.polling import DurationEstimator
from tasks.storage import STATE_FOLDER, Storage

DURATIONS_FILE = (STATE_FOLDER, "durations.json")
MAX_AGE = timedelta(days=7)
KEPT_PER_MODEL = 64


def read_durations(storage: Storage, now: datetime | None = None) -> dict[str, list[float]]:
    """The durations the last run saved, by model; empty when missing, stale or unreadable (a
    damaged file must never stop a run: the run just starts cold)."""
    try:
        document = storage.read_json(*DURATIONS_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    try:
        saved_at = datetime.fromisoformat(str(document.get("saved_at")))
    except ValueError:
        return {}
    if saved_at.tzinfo is None or (now or datetime.now(UTC)) - saved_at > MAX_AGE:
        return {}
    by_model = document.get("durations_s")
    if not isinstance(by_model, dict):
        return {}
    return {
        str(model): [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v) and v > 0]
        for model, values in by_model.items()
        if isinstance(values, list)
    }


Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def seed_estimator(estimator: DurationEstimator, saved: dict[str, list[float]], logger: Logger) -> None:
    for model, values in saved.items():
        if estimator.seed(model, values):
            logger.info("%s: first polls planned from %d durations of the last run", model, len(values))


def write_durations(
    storage: Storage, estimator: DurationEstimator, saved: dict[str, list[float]], logger: Logger
) -> None:
    """Save this run's latest durations (models it did not run keep the saved ones). Failing to
    save costs the next run a cold start, not this run its result."""
    latest = {**saved, **estimator.recent(KEPT_PER_MODEL)}
    if not latest:
        return
    try:
        storage.write_json({"saved_at": utc_now(), "durations_s": latest}, *DURATIONS_FILE)
    except OSError as exc:
        logger.warning("could not save the processing times for the next run: %s", exc)
