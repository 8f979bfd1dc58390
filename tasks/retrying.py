"""Retries with an explicit ``on=`` predicate, exponential backoff with jitter and ``Retry-After``.

Modelled on stamina: nothing is retried unless the caller names what is retryable, a server's
``Retry-After`` wins over our own backoff, and ``set_testing(True)`` removes the waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("hy3d.retry")

_testing = False


def set_testing(enabled: bool) -> None:
    """In tests, retry at once instead of sleeping (attempt counts stay the same)."""
    global _testing
    _testing = enabled


async def pause(seconds: float) -> None:
    """``asyncio.sleep``, except in tests (:func:`set_testing`), for loops of their own."""
    if not _testing:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_s: float = 1.0
    maximum_s: float = 30.0
    # Longest Retry-After we honour; beyond it we still wait but only this long.
    max_retry_after_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the given 1-based failed attempt."""
        ceiling = min(self.maximum_s, self.initial_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    on: Callable[[BaseException], bool],
    policy: RetryPolicy,
    what: str,
    deadline: float | None = None,
) -> T:
    """Run ``call`` until it succeeds, ``on(exc)`` is false, attempts run out or ``deadline``
    (a ``time.monotonic()`` value) would be passed by the next wait."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not on(exc) or attempt >= policy.attempts:
                raise
            delay = _retry_after(exc)
            delay = min(delay, policy.max_retry_after_s) if delay is not None else policy.backoff(attempt)
            # In testing nothing waits, so no wait can pass the deadline: judged on the delay, a
            # test failed whenever the random backoff happened to outlast its deadline.
            if deadline is not None and time.monotonic() + (0.0 if _testing else delay) > deadline:
                raise
            logger.warning(
                "%s failed (%s); attempt %d/%d, retrying in %.1f s",
                what,
                exc,
                attempt,
                policy.attempts,
                delay,
            )
            if not _testing:
                await asyncio.sleep(delay)
