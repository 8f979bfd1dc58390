"""Processing times carried to the next run into the same output: the estimator's seed (pure), the
file (tolerant of damage and age), and what it saves a second run against the emulator."""

from __future__ import annotations

import json
import logging
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emulator import EmulatorServer
from flows.durations import DURATIONS_FILE, read_durations, write_durations
from tasks.polling import MIN_SAMPLES, DurationEstimator
from tasks.settings import DEFAULT_MODEL
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


def test_too_few_or_unusable_durations_seed_nothing() -> None:
    estimator = DurationEstimator(floor=0.5)
    assert not estimator.seed("m", [5.0] * (MIN_SAMPLES - 1))
    assert not estimator.seed("m", [0.0, -1.0, float("nan"), float("inf"), 5.0])
    assert estimator.plan("m") is None


def test_the_file_round_trips_and_keeps_models_this_run_did_not_use(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    estimator = DurationEstimator()
    for value in (9.0, 10.0, 11.0):
        estimator.add("new", value)
    write_durations(storage, estimator, {"old": [30.0, 31.0, 32.0]}, LOG)
    assert read_durations(storage) == {"old": [30.0, 31.0, 32.0], "new": [9.0, 10.0, 11.0]}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"saved_at": "yesterday", "durations_s": {"m": [1.0, 2.0, 3.0]}}),
        json.dumps({"saved_at": "2026-01-01T00:00:00", "durations_s": {"m": [1.0, 2.0, 3.0]}}),  # naive
        json.dumps({"saved_at": "2026-11-01T00:00:00Z", "durations_s": {"m": [1.0, 2.0, 3.0]}}),  # stale
        json.dumps({"saved_at": "2026-11-24T00:00:00Z", "durations_s": ["m"]}),
    ],
)
def test_a_damaged_or_stale_file_means_a_cold_start(tmp_path: Path, content: str) -> None:
    storage = Storage(str(tmp_path))
    path = tmp_path.joinpath(*DURATIONS_FILE)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert read_durations(storage, now=datetime(2026, 11, 24, 12, tzinfo=UTC)) == {}


def test_a_file_from_this_week_is_read_and_its_junk_values_dropped(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    path = tmp_path.joinpath(*DURATIONS_FILE)
    path.parent.mkdir(parents=True)
    saved_at = (datetime(2026, 11, 24, tzinfo=UTC) - timedelta(days=6)).isoformat()
    path.write_text(json.dumps({"saved_at": saved_at, "durations_s": {"m": [1.5, "x", -2, 2.5, None, 3.5]}}))
    assert read_durations(storage, now=datetime(2026, 11, 24, tzinfo=UTC)) == {"m": [1.5, 2.5, 3.5]}


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_run_into_the_same_output_starts_warm(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """Run 1 starts cold (every prediction a scout polling on the growing interval); run 2, with new
    images into the same output, plans its first polls from run 1's durations (measured: 5 polls
    per prediction cold, 1-1.25 warm)."""
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
    assert statistics.mean(cold) >= 3.0, cold
    assert statistics.mean(warm) <= 1.5, warm


def write_csv_named(folder: Path, rows: list[tuple[str, str]], name: str) -> Path:
    manifest = write_csv(folder, rows)
    return manifest.rename(folder / name)
