"""The emulator's account slots: first come first served, a live limit, no slot lost to a cancel."""

from __future__ import annotations

import asyncio

from emulator.slots import SlotPool


def test_slots_are_handed_out_in_arrival_order_within_the_limit() -> None:
    async def go() -> tuple[list[int], int]:
        limit = 2
        pool = SlotPool(lambda: limit)
        started: list[int] = []
        peak = 0

        async def job(index: int) -> None:
            nonlocal peak
            async with pool.slot():
                started.append(index)
                peak = max(peak, pool.active)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(job(index) for index in range(10)))
        assert (pool.active, pool.waiting) == (0, 0)
        return started, peak

    started, peak = asyncio.run(go())
    assert started == list(range(10))
    assert peak == 2


def test_a_raised_limit_lets_waiting_tasks_in_without_a_release() -> None:
    async def go() -> int:
        limit = 1
        pool = SlotPool(lambda: limit)
        hold = asyncio.Event()
        inside = 0

        async def job() -> None:
            nonlocal inside
            async with pool.slot():
                inside += 1
                await hold.wait()

        tasks = [asyncio.ensure_future(job()) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert (inside, pool.waiting) == (1, 2)
        limit = 3  # as the control API does, from outside the pool
        await asyncio.sleep(0.2)  # no slot was released: only the limit watcher can let them in
        entered = inside
        hold.set()
        await asyncio.gather(*tasks)
        return entered

    assert asyncio.run(go()) == 3


def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_holder_frees_its_slot() -> None:
    async def go() -> list[str]:
        pool = SlotPool(lambda: 1)
        order: list[str] = []
        release = asyncio.Event()

        async def job(name: str) -> None:
            async with pool.slot():
                order.append(name)
                await release.wait()

        first = asyncio.ensure_future(job("first"))
        second = asyncio.ensure_future(job("second"))
        third = asyncio.ensure_future(job("third"))
        await asyncio.sleep(0.05)
        second.cancel()  # waiting: it must not take a slot later
        await asyncio.sleep(0.05)
        assert pool.waiting == 1
        first.cancel()  # holding: its slot goes to the next in line
        await asyncio.sleep(0.05)
        release.set()
        await third
        await asyncio.gather(first, second, return_exceptions=True)
        assert (pool.active, pool.waiting) == (0, 0)
        return order

    assert asyncio.run(go()) == ["first", "third"]
