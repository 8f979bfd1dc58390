"""Limits on what we ask of WaveSpeed: predictions in flight, and submits per minute.

In one process an asyncio semaphore / sliding window does the job; across runs and workers the
same limits are Prefect global concurrency limits, named by the caller (they need a Prefect server,
which every flow run has: a real one or the temporary one).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from tasks.errors import BudgetExceededError, SubmitsStoppedError

logger = logging.getLogger("hy3d.limits")

WINDOW_S = 60.0

# Predictions submitted beyond the account's concurrency, as a share of it, when the caller does not
# say. WaveSpeed queues them and starts one the moment a slot frees, so the account stays busy while
# we notice a completion, download it and submit the next item. Half is what brought the measured
# rate to the account's ceiling of C/L (docs/performance.md, "Queue headroom").
AUTO_QUEUE_HEADROOM = 0.5


def queue_headroom_for(concurrency: int, requested: int | None) -> int:
    """How many predictions a run keeps queued on WaveSpeed beyond ``concurrency`` (None: auto)."""
    if requested is not None:
        return requested
    return math.ceil(concurrency * AUTO_QUEUE_HEADROOM)


class SubmitRateLimiter:
    """At most ``per_minute`` submits in any 60-second window (WaveSpeed counts submits per minute)."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError("submits per minute must be at least 1")
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                while self._sent and now - self._sent[0] >= WINDOW_S:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return
                await self._sleep(self._sent[0] + WINDOW_S - now)


class Budget:
    """Running total of what this run pays; refuses a submit that would pass the cap."""

    def __init__(self, max_cost: float | None, prices: dict[str, float | None]) -> None:
        self.max_cost = max_cost
        self.prices = prices
        self.spent = 0.0

    def charge(self, content_key: str) -> float | None:
        price = self.prices.get(content_key)
        if self.max_cost is not None:
            if price is None:
                raise BudgetExceededError("the price of this item is unknown, so the cost cap cannot be kept")
            if self.spent + price > self.max_cost + 1e-9:
                raise BudgetExceededError(
                    f"submitting it (${price:.4f}) would take this run to ${self.spent + price:.4f}, "
                    f"over max_cost ${self.max_cost:.4f}"
                )
        self.spent += price or 0.0
        return price

    def refund(self, content_key: str) -> None:
        """The submit was certainly not accepted (so not billed)."""
        self.spent -= self.prices.get(content_key) or 0.0


class SubmitThrottle:
    """What the submit task calls right before sending (never on a cache hit): the budget, the
    local per-minute window, then Prefect's shared rate limit when a name is given. Once
    :meth:`close` is called no submit passes, not even one already waiting for its turn."""

    def __init__(
        self, per_minute: int | None, shared_limit: str | None, budget: Budget | None = None
    ) -> None:
        self.local = SubmitRateLimiter(per_minute) if per_minute else None
        self.shared_limit = shared_limit
        self.budget = budget
        self.closed_reason: str | None = None
        self._closed = asyncio.Event()

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._closed.set()

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise SubmitsStoppedError(self.closed_reason)

    async def acquire(self, content_key: str) -> None:
        self._check_open()
        if self.budget is not None:
            self.budget.charge(content_key)
        try:
            if self.local is not None:
                await self._unless_closed(self.local.acquire())
            if self.shared_limit:
                await self._unless_closed(rate_limit(self.shared_limit))
            self._check_open()
        except SubmitsStoppedError:
            self.refund(content_key)
            raise

    async def _unless_closed(self, turn: Awaitable[None]) -> None:
        """Wait for ``turn``, or give it up when the throttle is closed meanwhile."""
        waiting = asyncio.ensure_future(turn)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({waiting, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not waiting.done():
                waiting.cancel()
        if waiting.done() and not waiting.cancelled():
            waiting.result()
        self._check_open()

    def refund(self, content_key: str) -> None:
        if self.budget is not None:
            self.budget.refund(content_key)


def in_flight_slot(limit_name: str | None) -> AbstractAsyncContextManager[object]:
    """Hold one slot of the named global concurrency limit for a prediction's whole life."""
    if not limit_name:
        return nullcontext()
    return _held(limit_name)


@asynccontextmanager
async def _held(limit_name: str) -> AsyncIterator[None]:
    # A short lease: a run killed with slots held gives them back within a minute, not five.
    async with concurrency(limit_name, occupy=1, strict=True, lease_duration=60):
        yield


async def ensure_global_limit(name: str, limit: int, *, per_minute: int | None = None) -> bool:
    """Create the named global concurrency limit if it does not exist (an existing one is left as
    configured: an operator may have tuned it). With ``per_minute`` it is a rate limit: slots decay.
    Returns True when it was created."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        decay = per_minute / WINDOW_S if per_minute else None
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay or 0.0)
        )
    logger.info("created Prefect global concurrency limit %r (limit %d)", name, limit)
    return True
