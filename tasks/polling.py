"""When to poll next: few polls per prediction, completion noticed soon after it happens.

Before anything is known, intervals grow (2 s, ×1.5, capped). Once a few predictions of a model
have completed, their processing times (WaveSpeed's ``executionTime``) tell when the next one will
likely be done: the first poll goes out at about the 90th percentile of that time, so most
predictions are found completed by one poll, a moment after they finish; the overdue few are
polled again at a tenth of the typical duration. Never more often than the floor
(``poll_initial_interval_s``, 2 s by default, as WaveSpeed's docs ask).
"""

from __future__ import annotations

import math
import threading
from collections import deque


class DurationEstimator:
    """Recent processing times per model (seconds), shared by all waits of one client."""

    MIN_SAMPLES = 3

    def __init__(self, window: int = 256) -> None:
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, model: str, seconds: float) -> None:
        if seconds <= 0 or not math.isfinite(seconds):
            return
        with self._lock:
            self._samples.setdefault(model, deque(maxlen=self._window)).append(seconds)

    def quantile(self, model: str, q: float) -> float | None:
        with self._lock:
            samples = sorted(self._samples.get(model, ()))
        if len(samples) < self.MIN_SAMPLES:
            return None
        index = min(len(samples) - 1, max(0, math.ceil(q * len(samples)) - 1))
        return samples[index]


def next_pause(
    *,
    polls: int,
    elapsed: float,
    status: str,
    expected: float | None,
    floor: float,
    backoff: float,
    ceiling: float,
) -> float:
    """Seconds to sleep before the next poll.

    ``polls`` made so far, ``elapsed`` seconds since the submit (or since waiting began), the
    last ``status`` seen, ``expected`` processing time (None while unknown).
    """
    if expected is None:
        return min(floor * backoff**polls, ceiling)
    if polls == 0:
        return max(floor, expected) - elapsed if elapsed < max(floor, expected) else floor
    if status == "created":
        # Still queued behind the account's concurrency: it needs at least a processing time.
        return min(max(floor, expected / 2), ceiling)
    return min(max(floor, expected / 10), ceiling)
