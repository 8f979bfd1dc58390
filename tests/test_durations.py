"""Processing times carried to the next run into the same output: the estimator's seed (pure), the
file (tolerant of damage and age), and what it saves a second run against the emulator."""

from __future__ import annotations

import json
import logging
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emulator import EmulatorServer
from tasks.models import DEFAULT_MODEL
from tasks.polling import (
    DURATIONS_FILE,
    MIN_SAMPLES,
    DurationEstimator,
    parse_durations,
    read_durations,
    write_durations,
)
from tasks.storage import Storage
from tests.conftest import run_flow
from tests.test_flow import distinct_images, write_csv

LOG = logging.getLogger("test")


def test_a_seed_plans_until_the_runs_own_durations_replace_it() -> None:
    estimator = DurationEstimator(floor=0.5)
    assert estimator.seed("m", [5.0] * 10)
    seeded = estimator.plan("m")
    assert seeded is not None and seeded.first_s == pytest.approx(5.0)
    for _ in range(MIN_SAMPLES):
        estimator.add("m", 10.0)
    own = estimator.plan("m")
    assert own is not None and own.first_s == pytest.approx(10.0)
    assert not estimator.seed("m", [5.0] * 10)  # the run's own durations win
    assert estimator.plan("m") == own


def test_a_seed_far_from_the_runs_first_duration_is_dropped_at_once() -> None:
    """A seed far too short would have the whole first wave polled every floor until three of the
    run's own durations are known."""
    estimator = DurationEstimator(floor=0.5)
    assert estimator.seed("m", [5.0] * 10)
    estimator.add("m", 9.0)  # within 2x: kept
    assert estimator.plan("m") is not None
    estimator.add("m", 60.0)
    assert estimator.plan("m") is None  # back to a cold start: scouts and followers


def test_too_few_or_unusable_durations_seed_nothing() -> None:
    estimator = DurationEstimator(floor=0.5)
    assert not estimator.seed("m", [5.0] * (MIN_SAMPLES - 1))
    assert not estimator.seed("m", [0.0, -1.0, float("nan"), float("inf"), 5.0])
    assert estimator.plan("m") is None


API = "https://api.wavespeed.ai"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_the_file_round_trips_for_the_same_api_root_only(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    estimator = DurationEstimator()
    for value in (9.0, 10.0, 11.0):
        estimator.add("new", value)
    estimator.add("barely", 20.0)  # fewer than a seed needs: not written
    write_durations(storage, estimator, API, LOG)
    assert read_durations(storage, API, LOG) == {"new": [9.0, 10.0, 11.0]}
    assert read_durations(storage, "http://127.0.0.1:9999", LOG) == {}


def test_a_run_that_measured_too_little_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first = DurationEstimator()
    for value in (9.0, 10.0, 11.0):
        first.add("m", value)
    write_durations(storage, first, API, LOG)
    second = DurationEstimator()
    second.add("m", 30.0)
    write_durations(storage, second, API, LOG)
    assert read_durations(storage, API, LOG) == {"m": [9.0, 10.0, 11.0]}


def saved(saved_at: str, durations: object, api_root: str = API) -> dict[str, object]:
    return {"saved_at": saved_at, "api_root": api_root, "durations_s": durations}


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        [1, 2],
        saved("yesterday", {"m": [1.0, 2.0, 3.0]}),
        saved("2026-11-20T00:00:00", {"m": [1.0, 2.0, 3.0]}),  # no time zone
        saved("2026-11-01T00:00:00Z", {"m": [1.0, 2.0, 3.0]}),  # stale
        saved("2026-11-30T00:00:00Z", {"m": [1.0, 2.0, 3.0]}),  # from the future
        saved("2026-11-24T00:00:00Z", {"m": [1.0, 2.0, 3.0]}, api_root="http://elsewhere"),
        saved("2026-11-24T00:00:00Z", ["m"]),
    ],
)
def test_a_damaged_stale_or_foreign_document_means_a_cold_start(document: object) -> None:
    assert parse_durations(document, API, NOW) == {}


def test_junk_values_are_dropped_and_never_raise() -> None:
    values = [1.5, "x", -2, True, 10**400, None, float("nan"), 2.5]
    document = saved("2026-11-18T13:00:00Z", {"m": values, "n": [True]})
    assert parse_durations(document, API, NOW) == {"m": [1.5, 2.5]}


def test_an_unreadable_file_means_a_cold_start(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    path = tmp_path.joinpath(*DURATIONS_FILE)
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    assert read_durations(storage, API, LOG) == {}
    path.unlink()
    path.mkdir()  # not even a file: the read fails with an OSError
    assert read_durations(storage, API, LOG) == {}


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_run_into_the_same_output_starts_warm(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """Run 1 starts cold (every prediction a scout polling on the growing interval); run 2, with new
    images into the same output, plans its first polls from run 1's durations (measured: 5 polls
    per prediction cold, 1-1.75 warm)."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 1.0, 0.05, 8
    rows = distinct_images(samples, 8)
    output = tmp_path / "out"

    def polls_of(run_rows: list[tuple[str, str]], name: str) -> list[int]:
        state, summary = run_flow(
            manifest=str(write_csv_named(samples, run_rows, name)), output=str(output), concurrency=4
        )
        assert state.is_completed(), state.message
        return [emulator.stats.polls_for(item.prediction_id) for item in summary.items]

    cold = polls_of(rows[:4], "first.csv")
    saved = json.loads(output.joinpath(*DURATIONS_FILE).read_text())
    assert len(saved["durations_s"][DEFAULT_MODEL]) == 4
    assert all(0.9 <= value <= 1.5 for value in saved["durations_s"][DEFAULT_MODEL]), saved
    warm = polls_of(rows[4:], "second.csv")
    assert statistics.mean(cold) >= 4.0, cold
    assert statistics.mean(warm) <= 2.5, warm  # 1 per prediction when the seed's longest is long enough


def write_csv_named(folder: Path, rows: list[tuple[str, str]], name: str) -> Path:
    manifest = write_csv(folder, rows)
    return manifest.rename(folder / name)
