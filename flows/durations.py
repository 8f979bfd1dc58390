"""Processing times carried from one run to the next: ``DEST/.hy3d/durations.json``.

A run learns how long each model's predictions take from the ones it sees complete
(:class:`tasks.polling.DurationEstimator`), and until it knows three its first wave starts cold:
four scouts poll early and the rest wait for them. A nightly run into the same output would learn
the same thing again every night. Instead the last run's durations seed the next run's plan; the
run's own replace them as soon as three are known, or at once when its first is far from them
(:meth:`tasks.polling.DurationEstimator.add`). Only durations measured against the same API root
and saved within :data:`MAX_AGE` are used (WaveSpeed's speed changes; a week is also how long its
results live), and a run writes only the models it measured at least three times.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from flows.records import utc_now
from tasks.polling import MIN_SAMPLES, DurationEstimator
from tasks.storage import STATE_FOLDER, Storage

DURATIONS_FILE = (STATE_FOLDER, "durations.json")
MAX_AGE = timedelta(days=7)
KEPT_PER_MODEL = 64
CLOCK_SKEW = timedelta(minutes=5)  # a file "saved" further in the future than this is not trusted

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # a huge JSON integer
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def parse_durations(document: Any, api_root: str, now: datetime) -> dict[str, list[float]]:
    """The durations in a saved document, by model; empty unless it is well formed, fresh and from
    the same API root."""
    if not isinstance(document, dict) or document.get("api_root") != api_root:
        return {}
    try:
        saved_at = datetime.fromisoformat(str(document.get("saved_at")))
    except ValueError:
        return {}
    if saved_at.tzinfo is None or not now - MAX_AGE <= saved_at <= now + CLOCK_SKEW:
        return {}
    by_model = document.get("durations_s")
    if not isinstance(by_model, dict):
        return {}
    parsed = {}
    for model, values in by_model.items():
        if isinstance(values, list):
            usable = [seconds for seconds in map(_seconds, values) if seconds is not None]
            if usable:
                parsed[str(model)] = usable
    return parsed


def read_durations(storage: Storage, api_root: str, logger: Logger) -> dict[str, list[float]]:
    """What the last run saved; empty when missing or unusable. Never raises: without the file a
    run only starts cold."""
    try:
        document = storage.read_json(*DURATIONS_FILE)
    except Exception as exc:  # any backend's error: a cold start is the worst outcome
        logger.warning("could not read the last run's processing times (%s); starting cold", exc)
        return {}
    return parse_durations(document, api_root, datetime.now(UTC))


def seed_estimator(estimator: DurationEstimator, saved: dict[str, list[float]], logger: Logger) -> None:
    for model, values in saved.items():
        if estimator.seed(model, values):
            logger.info("%s: first polls planned from %d durations of the last run", model, len(values))


def write_durations(storage: Storage, estimator: DurationEstimator, api_root: str, logger: Logger) -> None:
    """Save the latest durations of the models this run measured at least three times (what a seed
    needs); leave the file as it is otherwise. Never raises: failing to save costs the next run a
    cold start, not this run its result."""
    latest = {
        model: values
        for model, values in estimator.recent(KEPT_PER_MODEL).items()
        if len(values) >= MIN_SAMPLES
    }
    if not latest:
        return
    document = {"saved_at": utc_now(), "api_root": api_root, "durations_s": latest}
    try:
        storage.write_json(document, *DURATIONS_FILE)
    except Exception as exc:  # any backend's error
        logger.warning("could not save the processing times for the next run: %s", exc)
