"""LanedTransport over real sockets: lanes open under load only, every request is answered, and
each lane's count returns to zero (streamed bodies hold their place until closed)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from emulator import EmulatorServer
from tasks.client import LanedTransport


def laned(capacity: int, max_lanes: int = 8) -> LanedTransport:
    return LanedTransport(lambda: httpx.AsyncHTTPTransport(), capacity=capacity, max_lanes=max_lanes)


def test_lanes_open_only_when_every_lane_is_full(emulator: EmulatorServer) -> None:
    async def go() -> tuple[int, int, int, list[int]]:
        transport = laned(capacity=3, max_lanes=4)
        headers = {"Authorization": f"Bearer {emulator.api_key}"}
        async with httpx.AsyncClient(base_url=emulator.url, headers=headers, transport=transport) as client:
            await client.get("/api/v3/balance")
            await client.get("/api/v3/balance")
            sequential = transport.lanes
            answers = await asyncio.gather(*(client.get("/api/v3/balance") for _ in range(30)))
            return sequential, transport.lanes, transport.load, [a.status_code for a in answers]

    sequential, lanes, load, statuses = asyncio.run(go())
    assert sequential == 1  # one request at a time never needs a second pool
    assert lanes == 4  # 30 at once: as many lanes as allowed
    assert load == 0 and statuses == [200] * 30


def test_a_streamed_body_holds_its_lane_until_closed(emulator: EmulatorServer) -> None:
    async def go() -> tuple[int, int, int]:
        transport = laned(capacity=1)
        headers = {"Authorization": f"Bearer {emulator.api_key}"}
        async with httpx.AsyncClient(base_url=emulator.url, headers=headers, transport=transport) as client:
            async with client.stream("GET", "/api/v3/balance"):  # body not read yet
                during = transport.load
                await client.get("/api/v3/balance")  # the first lane is taken: a second opens
                lanes = transport.lanes
            return during, lanes, transport.load

    assert asyncio.run(go()) == (1, 2, 0)


def test_a_request_that_never_connects_gives_its_place_back() -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def go() -> int:
        transport = laned(capacity=1)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/")
        return transport.load

    assert asyncio.run(go()) == 0
