"""Waking coroutines that sleep on a future from any thread: the waits of one client may run on
different event loops (Prefect task runs), so a future is resolved on its own loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

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
