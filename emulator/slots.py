"""Account concurrency: a FIFO pool of processing slots whose size is read live from the config."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

_RECHECK_S = 0.05
"""While tasks wait, the limit is re-read this often, so a limit raised from another thread takes
effect. One timer for the whole queue: with a timer (or a shared wake-up) per waiter, a queue of
hundreds cost the emulator's event loop more than the predictions themselves."""


class SlotPool:
    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._active = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _fits(self) -> bool:
        limit = self._limit()
        return limit <= 0 or self._active < limit

    def _grant(self) -> None:
        """Hand free slots to the longest waiting, in order."""
        while self._queue and self._fits():
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._active += 1

    async def _watch_limit(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(_RECHECK_S)
                self._grant()
        finally:
            self._watcher = None  # also when cancelled at shutdown: a restarted server starts another

    def _release(self) -> None:
        self._active -= 1
        self._grant()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (first come, first served) for a free slot and hold it for the block.
        A limit <= 0 means unlimited."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._grant()
        if not waiter.done() and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self._watch_limit())
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, but the task was cancelled before it could use it
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            raise
        try:
            yield
        finally:
            self._release()
