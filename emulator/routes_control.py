"""Unauthenticated control routes under `/_emulator/` (not counted in the request stats)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulator.responses import ApiError, read_json_object
from emulator.state import EmulatorState

CONTROL_PREFIX = "/_emulator/"


class ControlRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/_emulator/health", self.health, methods=["GET"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/config", self.get_config, methods=["GET"]),
            Route("/_emulator/config", self.patch_config, methods=["PATCH"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats.snapshot())

    async def reset(self, request: Request) -> Response:
        await self.state.reset()
        return JSONResponse({"ok": True})

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.state.config.public_dict())

    async def patch_config(self, request: Request) -> Response:
        changes = await read_json_object(request)
        try:
            self.state.config.update(changes)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        if "seed" in changes:
            self.state.reseed()
        return JSONResponse(self.state.config.public_dict())
