"""When to poll next: few polls per prediction, completion noticed soon after it happens.

**Once durations are known.** WaveSpeed reports each completed prediction's processing time
(``executionTime``). From the recent ones of a model, :func:`plan_polls` picks the moment of the
first poll (seconds after the submit) that notices completions soonest on average while keeping
the expected number of polls within :data:`PLAN_POLL_BUDGET`; overdue predictions are polled again
every ``floor`` seconds (``poll_initial_interval_s``, 2 s by default: the docs ask for no faster).
With durations spread evenly over ±J around L, that is one poll at about L + J when 2·J is short
next to the floor, and a first poll near the middle with a second and third 2 s apart when the
spread is wide.

**Before anything is known (a cold start).** The first wave of a run would otherwise poll on the
growing interval (2, 3, 4.5… s) and notice completions up to a whole interval late. Instead a few
waits of each model are *scouts* (:data:`SCOUTS`) and the rest *followers*. Scouts poll early and
often; they learn the processing time for everyone. Followers make no poll at all until
:data:`MIN_SAMPLES` durations are known (or a long safety interval passes), then follow the plan. The
scouts' extra polls are spread over the followers: a scout polls at the floor while many wait on
it, and on the usual growing interval when it is alone (so a run of a few images pays no extra
polls for scouting).

:class:`PollSchedule` puts these together for one prediction; the client (:mod:`tasks.client`)
sleeps and polls. The rest is pure.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.account_queue import AccountQueue
from tasks.wakeups import Waiter, new_waiter, sleep_on, wake

MIN_SAMPLES = 3  # durations of a model before its polls are planned
SCOUTS = 4  # waits per model that poll early while no duration is known
PLAN_POLL_BUDGET = 1.8  # expected polls per prediction allowed to the plan (the target is <= 3)
SCOUT_POLL_SHARE = 0.5  # extra polls per waiting prediction that the scouts may spend
FOLLOWER_SAFETY_FACTOR = 4.0  # a follower polls anyway after this many poll_max_interval_s
SEED_AGREES = (0.5, 2.0)  # a run's own duration outside these times the seed's median drops the seed


@dataclass(frozen=True)
class PollPlan:
    """When to poll a prediction of a model whose processing times are known."""

    first_s: float  # seconds after the submit
    overdue_s: float  # then every this many seconds
    median_s: float  # median processing time (a queued prediction waits about half of it)
    expected_polls: float  # over the samples the plan was made from
    expected_lag_s: float  # mean delay between completion and the poll that sees it


def plan_polls(durations: list[float], floor: float, budget: float = PLAN_POLL_BUDGET) -> PollPlan:
    """The first-poll time that minimises the mean lag over ``durations`` (sorted or not) when
    overdue predictions are polled every ``floor`` seconds, among those whose expected polls stay
    within ``budget``; polling at the longest duration (one poll each) is always allowed."""
    ordered = sorted(durations)
    if not ordered:
        raise ValueError("no durations to plan from")
    count = len(ordered)
    candidates = {ordered[min(count - 1, math.ceil(q / 40 * count) - 1)] for q in range(20, 41)}
    best: PollPlan | None = None
    for first in sorted(max(floor, c) for c in candidates):
        total_lag = total_polls = 0.0
        for duration in ordered:
            extra = math.ceil(max(0.0, duration - first) / floor - 1e-9)
            total_lag += first + extra * floor - duration
            total_polls += 1 + extra
        plan = PollPlan(first, floor, ordered[count // 2], total_polls / count, total_lag / count)
        if plan.expected_polls <= budget and (best is None or plan.expected_lag_s < best.expected_lag_s):
            best = plan
    assert best is not None  # the largest candidate costs one poll per prediction
    return best


def growing_pause(polls: int, floor: float, backoff: float, ceiling: float) -> float:
    """The interval for a prediction nothing is known about: floor, ×backoff per poll, capped."""
    return min(floor * backoff**polls, max(floor, ceiling))


def planned_pause(plan: PollPlan, *, polls: int, elapsed: float, status: str, ceiling: float) -> float:
    """Seconds to sleep before the next poll of a prediction submitted ``elapsed`` seconds ago."""
    if polls == 0:
        return max(0.0, plan.first_s - elapsed)
    if status == "created":
        # Still queued behind the account's concurrency: it needs at least a processing time.
        return min(max(plan.overdue_s, plan.median_s / 2), max(plan.overdue_s, ceiling))
    return plan.overdue_s


def scout_pause(
    polls: int, elapsed: float, *, scouts: int, followers: int, floor: float, backoff: float, ceiling: float
) -> float:
    """A scout's interval: as short as the floor while its extra polls are spread over many
    followers (their total stays near ``SCOUT_POLL_SHARE`` per waiting prediction), never longer
    than the growing interval."""
    spread = max(1, scouts) * max(elapsed, floor) / (SCOUT_POLL_SHARE * (max(1, scouts) + followers))
    return max(floor, min(growing_pause(polls, floor, backoff, ceiling), spread))


def follower_safety_pause(polls: int, ceiling: float, backoff: float) -> float:
    """How long a follower waits for the scouts before polling on its own."""
    return FOLLOWER_SAFETY_FACTOR * ceiling * backoff**polls


class Role(enum.Enum):
    scout = "scout"
    follower = "follower"


class DurationEstimator:
    """Recent processing times per model (seconds) and the cold-start roles, shared by all waits
    of one client. Thread-safe; waits may run on different event loops."""

    def __init__(self, window: int = 256, floor: float = 2.0) -> None:
        self._window = window
        self._floor = floor
        self._samples: dict[str, deque[float]] = {}
        self._plans: dict[str, PollPlan] = {}
        self._seeded: dict[str, float] = {}  # models planned from an earlier run: its median
        self._added_since_plan: dict[str, int] = {}
        self._scouts: dict[str, int] = {}
        self._followers: dict[str, int] = {}
        self._waiters: dict[str, list[Waiter]] = {}
        self._lock = threading.Lock()

    def add(self, model: str, seconds: float) -> None:
        if seconds <= 0 or not math.isfinite(seconds):
            return
        with self._lock:
            samples = self._samples.setdefault(model, deque(maxlen=self._window))
            samples.append(seconds)
            seeded = self._seeded.get(model)
            if seeded is not None and not SEED_AGREES[0] * seeded <= seconds <= SEED_AGREES[1] * seeded:
                # The earlier run's durations are wrong for this one: back to a cold start.
                del self._seeded[model]
                self._plans.pop(model, None)
            added = self._added_since_plan.get(model, 0) + 1
            self._added_since_plan[model] = added
            # Re-plan on every sample while few are known, then every 1/16th of the window.
            if len(samples) >= MIN_SAMPLES and (
                model not in self._plans or added >= max(1, len(samples) // 16)
            ):
                self._plans[model] = plan_polls(list(samples), self._floor)
                self._seeded.pop(model, None)
                self._added_since_plan[model] = 0
                learned = True
            else:
                learned = False
        if learned:
            self._wake(model)

    def plan(self, model: str) -> PollPlan | None:
        with self._lock:
            return self._plans.get(model)

    def seed(self, model: str, seconds: Iterable[float]) -> bool:
        """Durations from an earlier run plan this run's polls until :data:`MIN_SAMPLES` of its own
        are known, so that its first wave does not start cold (no scouts, no followers waiting on
        them). Dropped at once when one of the run's own falls outside :data:`SEED_AGREES` times
        their median (a seed far too short would have every prediction polled every floor).
        Ignored once the model has its own. Returns whether a plan was made."""
        usable = [value for value in seconds if value > 0 and math.isfinite(value)][-self._window :]
        if len(usable) < MIN_SAMPLES:
            return False
        with self._lock:
            if len(self._samples.get(model, ())) >= MIN_SAMPLES:
                return False
            plan = self._plans[model] = plan_polls(usable, self._floor)
            self._seeded[model] = plan.median_s
        self._wake(model)
        return True

    def recent(self, limit: int) -> dict[str, list[float]]:
        """The latest ``limit`` durations seen per model (for the next run's :meth:`seed`)."""
        with self._lock:
            return {model: list(samples)[-limit:] for model, samples in self._samples.items() if samples}

    # -- cold start ---------------------------------------------------------------------------

    def enlist(self, model: str, current: Role | None, *, may_scout: bool = True) -> Role:
        """The role of a wait that finds no plan: a scout while fewer than :data:`SCOUTS` are
        scouting, else a follower (a follower is promoted when a scout leaves). A prediction
        waiting in the account's queue (``may_scout=False``) only follows: it would poll for a
        whole queue wait before it could learn anything. A scout found to be queued after all
        (an answer that overtook others placed it wrongly) steps down for another."""
        if current is Role.scout and not may_scout:
            with self._lock:
                self._scouts[model] = max(0, self._scouts.get(model, 0) - 1)
                self._followers[model] = self._followers.get(model, 0) + 1
            self._wake(model)  # a follower may take its place
            return Role.follower
        with self._lock:
            if current is Role.scout:
                return current
            if may_scout and self._scouts.get(model, 0) < SCOUTS:
                if current is Role.follower:
                    self._followers[model] -= 1
                self._scouts[model] = self._scouts.get(model, 0) + 1
                return Role.scout
            if current is None:
                self._followers[model] = self._followers.get(model, 0) + 1
            return Role.follower

    def leave(self, model: str, role: Role) -> None:
        with self._lock:
            counts = self._scouts if role is Role.scout else self._followers
            counts[model] = max(0, counts.get(model, 0) - 1)
        if role is Role.scout:
            self._wake(model)  # a follower may take its place

    def census(self, model: str) -> tuple[int, int]:
        """(scouts, followers) of ``model`` right now."""
        with self._lock:
            return self._scouts.get(model, 0), self._followers.get(model, 0)

    async def wait_for_news(self, model: str, timeout: float) -> bool:
        """Sleep until the model's durations are planned or a scout leaves (True), or ``timeout``
        seconds pass (False)."""
        entry = new_waiter()
        with self._lock:
            if model in self._plans:
                return True
            self._waiters.setdefault(model, []).append(entry)
        try:
            return await sleep_on(entry, timeout)
        finally:
            with self._lock:
                waiters = self._waiters.get(model, [])
                if entry in waiters:
                    waiters.remove(entry)

    def _wake(self, model: str) -> None:
        with self._lock:
            waiters = self._waiters.pop(model, [])
        wake(waiters)


class PollSchedule:
    """The polls of one prediction: :meth:`next_pause` before each, :meth:`close` when done.

    ``model`` is None when nothing should be learned or planned (the prediction's age is unknown,
    e.g. resumed from an earlier run): then intervals simply grow. ``origin`` is the
    ``time.monotonic()`` of the submit. With a ``queue`` (the run submits beyond the account's
    concurrency), a prediction waiting in the account's queue is timed from its expected start,
    after one early probe while the queue is unconfirmed; call :meth:`observe` after each poll."""

    def __init__(
        self,
        estimator: DurationEstimator,
        model: str | None,
        origin: float,
        *,
        floor: float,
        backoff: float,
        ceiling: float,
        queue: AccountQueue | None = None,
        prediction_id: str = "",
    ) -> None:
        self._estimator = estimator
        self._model = model
        self._origin = origin
        self._floor, self._backoff, self._ceiling = floor, backoff, ceiling
        self._queue, self._prediction_id = queue, prediction_id
        self._probes = 0  # polls made as a probe of the account's queue (not part of the plan)
        self._probing = False
        self._seen_started = False  # a poll found it past `created`: it waits in no queue
        self.role: Role | None = None
        self._safety_until: float | None = None  # when a follower polls anyway (monotonic)
        self._safety_polls = -1

    @property
    def probing(self) -> bool:
        """The next poll is the account queue's probe (it must not be put off)."""
        return self._probing

    def expected_lag_s(self) -> float:
        """How long after completing a prediction on this schedule is noticed, on average. The
        account queue dates a prediction's end this much before its notice: dated at the notice,
        every queued successor would be polled that much late, and its own successors later still."""
        plan = self._estimator.plan(self._model) if self._model is not None else None
        return plan.expected_lag_s if plan is not None else 0.0

    def observe(self, status: str) -> None:
        """The status a poll answered (a probe's answer tells whether the account queues)."""
        if self._probing and self._queue is not None:
            self._queue.observe_probe(self._prediction_id, status)
            self._probing = False
        if status != "created":
            self._seen_started = True

    async def next_pause(self, polls: int, status: str, deadline: float) -> float | None:
        """Seconds to sleep before the next poll, or None after a follower slept until news of
        its model's durations (call again: there may be a plan now, or a scout's place)."""
        now = time.monotonic()
        elapsed = now - self._origin
        if self._model is None:
            return growing_pause(polls, self._floor, self._backoff, self._ceiling)
        # Once seen started, the prediction is timed from its submit, whatever the model says.
        queue = self._queue if not self._seen_started else None
        if polls == 0 and queue is not None and queue.needs_probe(self._prediction_id):
            self._probes, self._probing = 1, True
            return max(0.0, self._floor - elapsed)
        plan = self._estimator.plan(self._model)
        if plan is not None:
            start = queue.expected_start(self._prediction_id, plan.median_s) if queue is not None else None
            first = polls == self._probes
            if first and queue is not None and start is not None and queue.is_queued(self._prediction_id):
                return await self._first_planned_pause(queue, plan, start, deadline)
            return planned_pause(
                plan,
                polls=polls - self._probes,
                elapsed=elapsed if start is None else now - start,
                status=status,
                ceiling=self._ceiling,
            )
        queued = queue is not None and queue.is_queued(self._prediction_id)
        self.role = self._estimator.enlist(self._model, self.role, may_scout=not queued)
        if self.role is Role.follower:
            scouts, _ = self._estimator.census(self._model)
            if scouts == 0:
                # Nobody is learning this model's durations (the scouts left before MIN_SAMPLES were
                # known, and a queued prediction may not scout): news would only come from another
                # follower's safety poll. Poll on the growing interval instead.
                self._safety_until = None
                return growing_pause(polls, self._floor, self._backoff, self._ceiling)
            if self._safety_until is None or self._safety_polls != polls:
                # Counted from the first sleep after this poll: a wake (a scout left) must not restart it.
                pause = follower_safety_pause(polls, self._ceiling, self._backoff)
                self._safety_until, self._safety_polls = time.monotonic() + pause, polls
            safety = max(0.0, self._safety_until - time.monotonic())
            remaining = max(0.0, deadline - time.monotonic())
            return None if await self._estimator.wait_for_news(self._model, min(safety, remaining)) else 0.0
        scouts, followers = self._estimator.census(self._model)
        return scout_pause(
            polls,
            elapsed,
            scouts=scouts,
            followers=followers,
            floor=self._floor,
            backoff=self._backoff,
            ceiling=self._ceiling,
        )

    async def _first_planned_pause(
        self, queue: AccountQueue, plan: PollPlan, start: float, deadline: float
    ) -> float:
        """The first planned poll of a prediction the account queue times: from its expected
        start, or from the moment the count of freed slots says it started, if earlier. Until
        that count is reached (or the poll is due), it sleeps on it."""
        due = start + plan.first_s
        counted = queue.release_start(self._prediction_id)
        if counted is None and due > time.monotonic():
            await queue.wait_for_release(self._prediction_id, min(due, deadline) - time.monotonic())
            counted = queue.release_start(self._prediction_id)
        if counted is not None:
            due = min(due, counted + plan.first_s)
        return max(0.0, due - time.monotonic())

    def close(self) -> None:
        if self.role is not None and self._model is not None:
            self._estimator.leave(self._model, self.role)
            self.role = None
