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

Sections: wake-ups across event loops, the account's queue, poll planning, and the durations
saved from one run to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.storage import STATE_FOLDER, Storage, utc_now

# ==== Wake-ups ====================================================================================
#
# Waking coroutines that sleep on a future from any thread: the waits of one client may run on
# different event loops (Prefect task runs), so a future is resolved on its own loop.

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]


def new_waiter() -> Waiter:
    """A future on the running loop, to register before sleeping on it."""
    loop = asyncio.get_running_loop()
    return loop, loop.create_future()


async def sleep_on(waiter: Waiter, timeout: float) -> bool:
    """Sleep until the waiter is woken (True) or ``timeout`` seconds pass (False)."""
    done, _ = await asyncio.wait([waiter[1]], timeout=max(0.0, timeout))
    return bool(done)


def wake(waiters: Iterable[Waiter]) -> None:
    for loop, future in waiters:
        # A waiter whose loop has closed meanwhile has nothing left to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ==== The account's queue =========================================================================
#
# When WaveSpeed will start each of this client's predictions, for runs that submit more than the
# account runs at once.
#
# The contract: an account processes up to its concurrency limit; beyond it new predictions queue
# (stay ``created``) and start first come, first served as slots free. A run with queue headroom
# (``flows.pipeline``) keeps more predictions submitted than that, so the account never idles. Its
# queued predictions must not be polled as if their processing time ran from the submit: a queued
# prediction would look overdue from then on, and be polled at the floor for its whole queue wait.
#
# :class:`AccountQueue` models the queue from what the client knows: the order of its accepted
# submits and which of them it has seen finish. A prediction accepted while ``u`` earlier ones are
# unfinished (as far as we know) with ``u >= slots`` starts when the ``(u - slots + 1)``-th of those
# finishes, oldest first. Those not yet noticed as finished include some that have finished (the
# notice lags); they are the oldest, so counting them keeps the position right. The predecessor's
# end is its own expected start + the median duration, or its notice less the usual notice lag when
# that came first (see :func:`_start`).
#
# That estimate can be late: the prediction ahead may have finished before anyone noticed, or a
# slot freed by another. So each queued prediction also counts the slots freed since it was
# accepted (every notice of a finish frees one): when the count reaches its place in the queue, it
# has started, at about that notice less the usual lag. Its first poll is timed from the earlier of
# the two. Only ever earlier: a start dated by notices alone would carry their lag into every
# generation of successors (see :func:`_start`).
#
# Submits in flight together may be answered in another order than the server accepted them, so
# the order is the server's (each prediction's ``created_at``), not the order of the answers: by the
# answers, a run of three on two slots took the first-accepted prediction for the queued one.
#
# The model is only trusted once the account is seen queueing: the first predictions it places in
# the queue make one early poll (a *probe*). ``created`` confirms it; an answer that it is already
# processing (the account allows more than the run's ``concurrency``) counts against it, and after
# :data:`REFUTATIONS` the model is switched off: waits are then timed from the submit, as without it.

REFUTATIONS = 3  # probes answering "not queued" before the model is switched off


@dataclass
class _Entry:
    """A place in the account's order of arrival, and (``created_ns``) who holds it."""

    accepted: float  # time.monotonic() of the answer that made this place (places stay in answer order)
    after: _Entry | None  # the place whose end frees the slot this one waits for (until start)
    queued: bool  # behind the account's slots when the place was made
    start: float | None = None  # expected start, fixed when first asked for
    finished: float | None = None  # when it likely ended (noticed terminal, less the usual lag)
    created_ns: int | None = None  # the server's acceptance time of the holder, when known
    starts_at_release: int = 0  # queued: the count of freed slots at which it starts
    released: float | None = None  # queued: when that count was reached (notice less the lag)
    waiters: list[Waiter] = field(default_factory=list)  # waits for ``released``


class AccountQueue:
    """Expected starts of this client's predictions on an account running ``slots`` at once.
    Thread-safe (waits of one client may run on different event loops)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("an account runs at least one prediction at once")
        self.slots = slots
        # In the server's order of acceptance where known, else in the order of the answers.
        self._unfinished: OrderedDict[str, _Entry] = OrderedDict()
        self._confirmed: bool | None = None  # None: not known yet whether the account queues
        self._refuted = 0
        self._freed = 0  # slots freed so far: finishes noticed (or predictions no longer followed)
        self._unreleased: deque[_Entry] = deque()  # queued places whose count is not reached, in order
        self._lock = threading.Lock()

    @property
    def confirmed(self) -> bool | None:
        """Whether a probe saw the account queue (True) or probes refuted it (False); None until then."""
        return self._confirmed

    def accepted(
        self, prediction_id: str, at: float, created_ns: int | None = None, sent_at: float | None = None
    ) -> None:
        """A submit sent at ``sent_at`` was answered at ``at`` (``time.monotonic()``); the server
        accepted it at ``created_ns`` (its clock), if known."""
        with self._lock:
            if self._confirmed is False:
                return
            ahead = len(self._unfinished)
            after = None
            if ahead >= self.slots:
                after = next(itertools.islice(self._unfinished.values(), ahead - self.slots, None))
            entry = _Entry(at, after, queued=after is not None, created_ns=created_ns)
            if entry.queued:
                entry.starts_at_release = self._freed + ahead - self.slots + 1
                self._unreleased.append(entry)
            overtaken = self._accepted_later(created_ns, sent_at)
            if not overtaken:
                self._unfinished[prediction_id] = entry
                return
            # Answers overtook this one: the places in the order stay as they are (each was placed
            # by how many were ahead of it), but each holder moves one place back, and this
            # prediction takes the place of the first it should have preceded.
            places = [self._unfinished.pop(pid) for pid in overtaken] + [entry]
            stamps = [created_ns] + [place.created_ns for place in places[:-1]]
            for holder, place, stamp in zip([prediction_id, *overtaken], places, stamps, strict=True):
                place.created_ns = stamp
                self._unfinished[holder] = place

    def _accepted_later(self, created_ns: int | None, sent_at: float | None) -> list[str]:
        """The predictions at the end of the order that the server accepted after ``created_ns``.
        Only those answered after this submit was sent: one answered before cannot have been
        accepted after it, whatever the stamps say (servers' clocks may disagree)."""
        later: list[str] = []
        if created_ns is None:
            return later
        for pid, entry in reversed(self._unfinished.items()):
            if entry.created_ns is None or entry.created_ns <= created_ns:
                break
            if sent_at is not None and entry.accepted < sent_at:
                break
            later.append(pid)
        later.reverse()
        return later

    def finished(self, prediction_id: str, at: float) -> None:
        """Noticed terminal, or no longer waited for (its slot is then assumed free)."""
        woken: list[Waiter] = []
        with self._lock:
            entry = self._unfinished.pop(prediction_id, None)
            if entry is None:
                return
            entry.finished = at
            self._freed += 1
            unreleased = self._unreleased
            while unreleased and (
                unreleased[0].starts_at_release <= self._freed
                # It ran before its count was reached (a finish went unseen): so did all ahead of it.
                or (entry.queued and entry.released is None)
            ):
                place = unreleased.popleft()
                place.released = at
                woken += place.waiters
                place.waiters = []
        wake(woken)

    def release_start(self, prediction_id: str) -> float | None:
        """When a queued prediction started by the count of freed slots, once that count is reached."""
        with self._lock:
            entry = self._unfinished.get(prediction_id)
            if entry is None or not self._confirmed or entry.released is None:
                return None
            return max(entry.accepted, entry.released)

    async def wait_for_release(self, prediction_id: str, timeout: float) -> None:
        """Sleep until the prediction's count of freed slots is reached, or ``timeout`` seconds
        (at once when it is not waiting for one)."""
        waiter = new_waiter()
        with self._lock:
            entry = self._unfinished.get(prediction_id)
            if entry is None or not entry.queued or entry.released is not None:
                return
            entry.waiters.append(waiter)
        try:
            await sleep_on(waiter, timeout)
        finally:
            with self._lock, contextlib.suppress(ValueError):
                entry.waiters.remove(waiter)

    def is_queued(self, prediction_id: str) -> bool:
        """Whether the model has this prediction waiting in the account's queue (its place may
        change while answers that overtook each other are put in order)."""
        with self._lock:
            entry = self._unfinished.get(prediction_id)
            return entry is not None and entry.queued

    def needs_probe(self, prediction_id: str) -> bool:
        """A queued prediction makes one early poll while nobody knows whether the account queues."""
        return self._confirmed is None and self.is_queued(prediction_id)

    def observe_probe(self, prediction_id: str, status: str) -> None:
        """The answer to a probe: ``created`` means the account queues (wherever the model now
        places the prediction: a queue is a queue); anything else, that it ran it at once, which
        counts against the model only while the model still places it in the queue. (Nobody
        sleeps on a release yet: waits use the model only once it is confirmed.)"""
        with self._lock:
            entry = self._unfinished.get(prediction_id)
            if self._confirmed is not None or entry is None:
                return
            if status == "created":
                self._confirmed = True
                return
            if not entry.queued:  # moved to a place within the slots since it probed
                return
            self._refuted += 1
            if self._refuted >= REFUTATIONS:
                self._confirmed = False
                # Nothing is timed from the model any more; without this the links between
                # entries whose start was never asked for would keep every one of them alive.
                self._unfinished.clear()
                self._unreleased.clear()

    def expected_start(self, prediction_id: str, median_s: float) -> float | None:
        """When the prediction should start processing (``time.monotonic()``), or None when the
        model does not apply (unknown prediction, or the account not seen queueing)."""
        with self._lock:
            entry = self._unfinished.get(prediction_id)
            if entry is None or not self._confirmed:
                return None
            return _start(entry, median_s)


def _start(entry: _Entry, median_s: float) -> float:
    """The expected start of ``entry``, computed once: the end of the prediction ahead of it, which
    is its own expected start + the median, or when it was seen to end, whichever came first. The
    earlier of the two: an estimate made late by late notices would otherwise pass the delay on to
    every successor, growing each generation; an early one costs a poll or two, not lag."""
    target = entry
    chain: list[_Entry] = []
    while entry.start is None and entry.after is not None:
        chain.append(entry)
        entry = entry.after
    if entry.start is None:
        entry.start = entry.accepted
    for waiting in reversed(chain):
        ahead = waiting.after
        assert ahead is not None and ahead.start is not None
        end = ahead.start + median_s
        if ahead.finished is not None:
            end = min(end, ahead.finished)
        waiting.start = max(waiting.accepted, end)
        waiting.after = None  # fixed now; the one ahead may be forgotten
    assert target.start is not None
    return target.start


# ==== Poll planning ===============================================================================

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


# ==== Saved durations =============================================================================
#
# Processing times carried from one run to the next: ``DEST/.hy3d/durations.json``.
#
# A run learns how long each model's predictions take from the ones it sees complete
# (:class:`DurationEstimator`), and until it knows three its first wave starts cold:
# four scouts poll early and the rest wait for them. A nightly run into the same output would learn
# the same thing again every night. Instead the last run's durations seed the next run's plan; the
# run's own replace them as soon as three are known, or at once when its first is far from them
# (:meth:`DurationEstimator.add`). Only durations measured against the same API root
# and saved within :data:`MAX_AGE` are used (WaveSpeed's speed changes; a week is also how long its
# results live), and a run writes only the models it measured at least three times.

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
