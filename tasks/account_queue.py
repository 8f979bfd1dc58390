"""When WaveSpeed will start each of this client's predictions, for runs that submit more than the
account runs at once.

The contract: an account processes up to its concurrency limit; beyond it new predictions queue
(stay ``created``) and start first come, first served as slots free. A run with queue headroom
(``flows.pipeline``) keeps more predictions submitted than that, so the account never idles. Its
queued predictions must not be polled as if their processing time ran from the submit: a queued
prediction would look overdue from then on, and be polled at the floor for its whole queue wait.

:class:`AccountQueue` models the queue from what the client knows: the order of its accepted
submits and which of them it has seen finish. A prediction accepted while ``u`` earlier ones are
unfinished (as far as we know) with ``u >= slots`` starts when the ``(u - slots + 1)``-th of those
finishes, oldest first. Those not yet noticed as finished include some that have finished (the
notice lags); they are the oldest, so counting them keeps the position right. The predecessor's
end is its own expected start + the median duration, or its notice less the usual notice lag when
that came first (see :func:`_start`).

That estimate can be late: the prediction ahead may have finished before anyone noticed, or a
slot freed by another. So each queued prediction also counts the slots freed since it was
accepted (every notice of a finish frees one): when the count reaches its place in the queue, it
has started, at about that notice less the usual lag. Its first poll is timed from the earlier of
the two. Only ever earlier: a start dated by notices alone would carry their lag into every
generation of successors (see :func:`_start`).

Submits in flight together may be answered in another order than the server accepted them, so
the order is the server's (each prediction's ``created_at``), not the order of the answers: by the
answers, a run of three on two slots took the first-accepted prediction for the queued one.

The model is only trusted once the account is seen queueing: the first predictions it places in
the queue make one early poll (a *probe*). ``created`` confirms it; an answer that it is already
processing (the account allows more than the run's ``concurrency``) counts against it, and after
:data:`REFUTATIONS` the model is switched off: waits are then timed from the submit, as without it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from tasks.wakeups import Waiter, new_waiter, sleep_on, wake

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
