"""Everything one emulator app instance holds: config, stats, stores, randomness, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import httpx

from emulator.config import EmulatorConfig
from emulator.signing import UrlSigner
from emulator.slots import SlotPool
from emulator.stats import EmulatorStats
from emulator.store import Store


class EmulatorState:
    def __init__(self, config: EmulatorConfig, stats: EmulatorStats) -> None:
        self.config = config
        self.stats = stats
        self.store = Store()
        self.rng = random.Random(config.seed)
        self.signer = UrlSigner()
        self.slots = SlotPool(lambda: self.config.max_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.submit_times: deque[float] = deque()
        self.http: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- randomness --------------------------------------------------------------------------------
    def chance(self, rate: float) -> bool:
        """True with probability `rate` (no random draw when the rate is 0 or 1)."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        return self.rng.random() < rate

    def reseed(self) -> None:
        self.rng = random.Random(self.config.seed)

    def processing_time(self) -> float:
        low = max(0.0, self.config.latency_s - self.config.jitter_s)
        high = max(low, self.config.latency_s + self.config.jitter_s)
        return low if high == low else self.rng.uniform(low, high)

    def rate_limited(self) -> bool:
        """Sliding one-minute window over accepted-for-processing submit attempts."""
        limit = self.config.max_submits_per_minute
        now = time.monotonic()
        while self.submit_times and now - self.submit_times[0] > 60.0:
            self.submit_times.popleft()
        if limit is not None and len(self.submit_times) >= limit:
            return True
        self.submit_times.append(now)
        return False

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def http_client(self) -> httpx.AsyncClient:
        """The client that fetches foreign input URLs (created on first use, closed by stop())."""
        if self.http is None:
            self.http = httpx.AsyncClient(follow_redirects=True)
        return self.http

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reset(self) -> None:
        """Cancel pending work, forget predictions/uploads/outputs, zero the stats, re-seed."""
        await self.cancel_tasks()
        self.store.clear()
        self.submit_times.clear()
        self.reseed()
        self.stats.reset()

    async def stop(self) -> None:
        await self.cancel_tasks()
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.aclose()
            self.http = None
