"""Requests spread over several small connection pools ("lanes") instead of one big one.

httpcore's pool looks at every one of its connections for every request it places, so its CPU
cost per request grows with the number of connections; several small pools keep that cost near
what one small pool costs (figures: docs/performance.md, "Connection lanes"). :class:`LanedTransport`
opens a new lane only when every lane already carries :data:`LANE_CAPACITY` requests, so a small
run uses a single pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

LANE_CAPACITY = 16  # requests in flight per lane before another lane opens
MAX_LANES = 64


@dataclass
class _Lane:
    transport: httpx.AsyncBaseTransport
    load: int = 0  # requests sent and not yet finished (response body closed)


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its lane's place back when closed (streamed downloads hold
    their connection until then)."""

    def __init__(self, stream: httpx.AsyncByteStream, lane: _Lane) -> None:
        self._stream = stream
        self._lane: _Lane | None = lane

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._lane is not None:
                self._lane.load -= 1
                self._lane = None


class LanedTransport(httpx.AsyncBaseTransport):
    """Sends each request through the least loaded of up to ``max_lanes`` transports made by
    ``make_lane``. For one event loop (like an ``httpx.AsyncClient``)."""

    def __init__(
        self,
        make_lane: Callable[[], httpx.AsyncBaseTransport],
        *,
        capacity: int = LANE_CAPACITY,
        max_lanes: int = MAX_LANES,
    ) -> None:
        if capacity < 1 or max_lanes < 1:
            raise ValueError("capacity and max_lanes must be at least 1")
        self._make_lane = make_lane
        self._capacity = capacity
        self._max_lanes = max_lanes
        self._lanes: list[_Lane] = []

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @property
    def load(self) -> int:
        return sum(lane.load for lane in self._lanes)

    def _pick(self) -> _Lane:
        lane = min(self._lanes, key=lambda candidate: candidate.load, default=None)
        if lane is None or (lane.load >= self._capacity and len(self._lanes) < self._max_lanes):
            lane = _Lane(self._make_lane())
            self._lanes.append(lane)
        return lane

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._pick()
        lane.load += 1
        try:
            response = await lane.transport.handle_async_request(request)
        except BaseException:
            lane.load -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, lane),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            await lane.transport.aclose()
