"""Account concurrency: a FIFO pool of processing slots whose size is read live from the config."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

_RECHECK_S = 0.05
"""Waiters re-read the limit this often, so a limit raised from another thread takes effect."""


class SlotPool:
    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._active = 0
        self._queue: deque[object] = deque()
        self._wake = asyncio.Event()

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _my_turn(self, token: object) -> bool:
        limit = self._limit()
        return self._queue[0] is token and (limit <= 0 or self._active < limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (first come, first served) for a free slot and hold it for the block.
        A limit <= 0 means unlimited."""
        token = object()
        self._queue.append(token)
        try:
            while not self._my_turn(token):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _RECHECK_S)
        except BaseException:
            self._queue.remove(token)
            self._wake.set()
            raise
        self._queue.popleft()
        self._active += 1
        self._wake.set()  # the next in line may fit as well
        try:
            yield
        finally:
            self._active -= 1
            self._wake.set()
