"""Poll scheduling: the plan from known durations (pure), the cold-start roles, and what a first
wave costs against the emulator."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import pytest

from emulator import EmulatorServer
from tasks.client import WaveSpeedClient
from tasks.polling import (
    MIN_SAMPLES,
    SCOUTS,
    AccountQueue,
    DurationEstimator,
    PollSchedule,
    Role,
    growing_pause,
    plan_polls,
    planned_pause,
    scout_pause,
)
from tests.conftest import settings_for
from tests.test_client import BALL, MODEL


def uniform(low: float, high: float, count: int = 200, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


def test_narrow_spread_is_polled_once_just_after_the_longest() -> None:
    # L = 5 s ± 0.5 s with a 2 s floor: a second poll would come 2 s late, so one poll at the end.
    plan = plan_polls(uniform(4.5, 5.5), floor=2.0)
    assert 5.4 <= plan.first_s <= 5.5
    assert plan.expected_polls == pytest.approx(1.0, abs=0.02)
    assert plan.expected_lag_s == pytest.approx(0.5, abs=0.06)


def test_wide_spread_polls_earlier_and_again_within_the_budget() -> None:
    # L = 30 s ± 3 s: polling at the end would notice completions 3 s late on average.
    plan = plan_polls(uniform(27, 33), floor=2.0)
    assert 27.5 < plan.first_s < 32
    assert plan.expected_polls <= 1.8
    assert plan.expected_lag_s < 1.5
    assert plan.overdue_s == 2.0


def test_the_plan_never_polls_before_the_floor() -> None:
    plan = plan_polls([0.2, 0.3, 0.25], floor=2.0)
    assert plan.first_s == 2.0 and plan.expected_polls == 1.0


def test_planned_pause_counts_from_the_submit_and_waits_longer_when_queued() -> None:
    plan = plan_polls(uniform(9, 11), floor=2.0)
    assert planned_pause(plan, polls=0, elapsed=3.0, status="unknown", ceiling=15) == pytest.approx(
        plan.first_s - 3.0
    )
    assert planned_pause(plan, polls=0, elapsed=60.0, status="unknown", ceiling=15) == 0.0
    assert planned_pause(plan, polls=1, elapsed=12.0, status="processing", ceiling=15) == 2.0
    assert planned_pause(plan, polls=1, elapsed=12.0, status="created", ceiling=15) == pytest.approx(
        plan.median_s / 2, abs=0.01
    )


def test_a_scout_polls_at_the_floor_only_while_many_wait_on_it() -> None:
    common = {"floor": 2.0, "backoff": 1.5, "ceiling": 15.0}
    for polls, elapsed in [(0, 0.0), (3, 9.5), (6, 40.0)]:
        alone = scout_pause(polls, elapsed, scouts=1, followers=0, **common)
        assert alone == growing_pause(polls, 2.0, 1.5, 15.0)
    assert scout_pause(6, 40.0, scouts=4, followers=196, **common) == 2.0
    # With 96 waiting on four scouts, their extra polls stay near half a poll per prediction.
    assert 2.0 < scout_pause(8, 120.0, scouts=4, followers=96, **common) < 15.0


def test_roles_scouts_first_then_followers_promoted_when_a_scout_leaves() -> None:
    estimator = DurationEstimator(floor=0.5)
    roles = [estimator.enlist("m", None) for _ in range(SCOUTS + 3)]
    assert roles == [Role.scout] * SCOUTS + [Role.follower] * 3
    assert estimator.census("m") == (SCOUTS, 3)
    estimator.leave("m", Role.scout)
    assert estimator.enlist("m", Role.follower) is Role.scout
    assert estimator.census("m") == (SCOUTS, 2)
    assert estimator.enlist("other", None) is Role.scout  # roles are per model
    # A prediction waiting in the account's queue only follows, even with a scout's place free.
    assert estimator.enlist("third", None, may_scout=False) is Role.follower
    assert estimator.enlist("third", None) is Role.scout
    # A scout later found to be queued steps down, and its place goes to another.
    assert estimator.enlist("third", Role.scout, may_scout=False) is Role.follower
    assert estimator.census("third") == (0, 2)
    assert estimator.enlist("third", Role.follower) is Role.scout
    estimator.leave("third", Role.scout)
    estimator.leave("third", Role.follower)  # the one that stepped down, when its wait ends
    assert estimator.census("third") == (0, 0)


def test_a_prediction_its_probe_found_processing_scouts_instead_of_waiting_in_a_queue() -> None:
    """The model placed it in the account's queue; its probe answered that it runs. It must not
    sit as a follower until durations are known (the first-accepted prediction, mistaken for the
    queued one, was noticed 2.3 s after it completed)."""
    queue = AccountQueue(1)
    queue.accepted("a", 0.0)
    queue.accepted("b", 0.0)
    schedule = PollSchedule(
        DurationEstimator(floor=0.1),
        "m",
        0.0,
        floor=0.1,
        backoff=1.5,
        ceiling=0.3,
        queue=queue,
        prediction_id="b",
    )

    async def go() -> float | None:
        deadline = time.monotonic() + 0.5
        assert await schedule.next_pause(0, "unknown", deadline) == 0.0  # the probe, at once
        schedule.observe("processing")
        return await schedule.next_pause(1, "processing", deadline)

    pause = asyncio.run(go())
    assert schedule.role is Role.scout and pause is not None and pause <= 0.3
    assert queue.is_queued("b")  # the model's place is unchanged: the schedule knows better


def test_a_queued_prediction_is_polled_from_the_freed_slot_when_that_comes_first() -> None:
    """b waits for a's slot. Its expected start is a's start + the median (1 s); a finishes at
    0.1 s instead, and b's first poll moves to 0.1 s + the plan's first poll."""
    estimator = DurationEstimator(floor=0.1)
    for _ in range(MIN_SAMPLES):
        estimator.add("m", 1.0)
    plan = estimator.plan("m")
    assert plan is not None
    now = time.monotonic()
    queue = AccountQueue(1)
    queue.accepted("a", now)
    queue.accepted("b", now)
    schedule = PollSchedule(
        estimator, "m", now, floor=0.1, backoff=1.5, ceiling=0.3, queue=queue, prediction_id="b"
    )

    async def go() -> tuple[float | None, float]:
        deadline = time.monotonic() + 30
        await schedule.next_pause(0, "unknown", deadline)  # the probe
        schedule.observe("created")
        assert queue.confirmed is True
        asyncio.get_running_loop().call_later(0.1, lambda: queue.finished("a", time.monotonic()))
        pause = await schedule.next_pause(1, "created", deadline)  # sleeps until a's slot frees
        return pause, time.monotonic()

    pause, at = asyncio.run(go())
    assert at - now < 0.5  # woken by the freed slot, not at the estimate (1 s + the first poll)
    assert pause is not None and pause == pytest.approx(now + 0.1 + plan.first_s - at, abs=0.05)


def test_followers_sleep_until_enough_durations_are_known() -> None:
    async def go() -> tuple[bool, bool, float]:
        estimator = DurationEstimator(floor=0.5)
        timed_out = await estimator.wait_for_news("m", 0.05)
        waiter = asyncio.create_task(estimator.wait_for_news("m", 30.0))
        await asyncio.sleep(0.01)
        for seconds in [1.0] * MIN_SAMPLES:
            assert not waiter.done()
            estimator.add("m", seconds)
        started = asyncio.get_running_loop().time()
        woken = await waiter
        plan = estimator.plan("m")
        assert plan is not None
        return timed_out, woken, asyncio.get_running_loop().time() - started

    timed_out, woken, delay = asyncio.run(go())
    assert (timed_out, woken) == (False, True)
    assert delay < 1.0


def test_a_cold_first_wave_polls_little_and_notices_completions_soon(emulator: EmulatorServer) -> None:
    """40 predictions submitted at once, nothing known: four scouts learn the duration for the
    rest. Growing intervals from 0.1 s (×1.5, the schedule before scouts) took 5.0 polls each
    here, notice lag 0.13 s; with scouts 1.9 polls, 0.06 s."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 2.0, 0.2, 0
    settings = settings_for(emulator, poll_initial_interval_s=0.1, poll_backoff=1.5, poll_max_interval_s=2.0)

    async def go() -> list[str]:
        async with WaveSpeedClient(settings) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            submitted = [(await client.submit(MODEL, {"image": url})).id for _ in range(40)]
            await asyncio.gather(*(client.wait(pid, model=MODEL, timeout_s=30) for pid in submitted))
            return submitted

    ids = asyncio.run(go())
    polls = [emulator.stats.polls_for(i) for i in ids]
    lags = list(emulator.stats.completion_lags().values())
    assert len(lags) == 40
    assert statistics.mean(polls) <= 3.0, polls
    assert statistics.mean(lags) <= 0.5, lags  # ~0.06 s on a quiet machine


def test_polls_are_timed_from_the_moment_the_submit_was_accepted(emulator: EmulatorServer) -> None:
    """The flow writes its ledger and cache records between the submit and the wait (seconds,
    with thousands in flight); the first poll still goes out when the prediction should be done."""
    emulator.config.latency_s, emulator.config.jitter_s = 1.0, 0.0
    settings = settings_for(emulator, poll_initial_interval_s=0.1)

    async def go() -> str:
        async with WaveSpeedClient(settings) as client:
            for _ in range(MIN_SAMPLES):
                client.durations.add(MODEL, 1.1)
            url = await client.upload(BALL, "ball.png", "image/png")
            prediction = await client.submit(MODEL, {"image": url})
            await asyncio.sleep(0.6)  # the caller is late to wait
            await client.wait(prediction.id, model=MODEL)
            return prediction.id

    prediction_id = asyncio.run(go())
    assert emulator.stats.polls_for(prediction_id) == 1
    assert emulator.stats.completion_lags()[prediction_id] < 0.4  # 0.7 s if timed from the wait


def test_queued_followers_whose_scouts_left_early_poll_instead_of_sleeping(emulator: EmulatorServer) -> None:
    """The demo's 65 s item on 2.1 s of inference: both scouts finished with two durations known
    (three make a plan), and the queued predictions, which may not scout, slept as followers until a
    60 s safety poll. Four items, two slots and one queued, scouts finishing apart: before the fix the
    last two took 65 s each."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 2.4, 0.0, 2
    settings = settings_for(emulator, poll_initial_interval_s=2.0, poll_max_interval_s=15.0)

    async def go() -> dict[int, float]:
        walls: dict[int, float] = {}
        slots = asyncio.Semaphore(3)  # the flow's slots: 2 processing + 1 queued
        async with WaveSpeedClient(settings, account_slots=2) as client:
            url = await client.upload(BALL, "ball.png", "image/png")

            async def item(number: int, delay: float) -> None:
                await asyncio.sleep(delay)
                started = time.monotonic()
                async with slots:
                    prediction = await client.submit(MODEL, {"image": url, "n": number})
                    assert (await client.wait(prediction.id, model=MODEL, timeout_s=120)).succeeded
                walls[number] = time.monotonic() - started

            await asyncio.gather(item(1, 0), item(2, 0.25), item(3, 0.3), item(4, 0.35))
        return walls

    walls = asyncio.run(go())
    assert max(walls.values()) < 20, walls  # 8-9 s here; 65 s before
