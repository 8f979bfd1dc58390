"""Unauthenticated control routes under `/_emulator/` (not counted in the request stats)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from emulator.responses import ApiError, read_json_object
from emulator.routing import RouteGroup, route

CONTROL_PREFIX = "/_emulator/"


class ControlRoutes(RouteGroup):
    @route("/_emulator/health", "GET")
    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    @route("/_emulator/stats", "GET")
    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats.snapshot())

    @route("/_emulator/reset", "POST")
    async def reset(self, request: Request) -> Response:
        await self.state.reset()
        return JSONResponse({"ok": True})

    @route("/_emulator/config", "GET", "PATCH")
    async def config(self, request: Request) -> Response:
        """The switches, after a PATCH has changed those its JSON object names."""
        if request.method == "PATCH":
            changes = await read_json_object(request)
            try:
                self.state.config.update(changes)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            if "seed" in changes:
                self.state.reseed()
        return JSONResponse(self.state.config.public_dict())
