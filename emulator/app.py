"""The ASGI app: routes, the envelope for every error, request counting, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.config import EmulatorConfig
from emulator.responses import REASONS, ApiError, error_envelope
from emulator.routes_account import AccountRoutes
from emulator.routes_cdn import CdnRoutes, DeliberateTruncation
from emulator.routes_control import CONTROL_PREFIX, ControlRoutes
from emulator.routes_media import MediaRoutes
from emulator.routes_predictions import PredictionRoutes
from emulator.state import EmulatorState
from emulator.stats import EmulatorStats
from emulator.webhooks import WebhookRoutes

UNMATCHED_ROUTE = "<unmatched>"


class RequestCounter:
    """Counts every API request by (method, route template, status); control routes are not counted."""

    def __init__(self, app: ASGIApp, stats: EmulatorStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
                self.stats.record_request(scope["method"], str(route), status)

        async def counting_send(message: Message) -> None:
            # Counted before the answer leaves: a client that has its answer finds it counted.
            if message["type"] == "http.response.start":
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            record(500)  # no answer started: the app failed


class _HideDeliberateTruncation(logging.Filter):
    """uvicorn logs an app exception after a started response; ours are on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeliberateTruncation))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideDeliberateTruncation) for f in logger.filters):
        logger.addFilter(_HideDeliberateTruncation())


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_envelope(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return error_envelope(exc.status_code, REASONS.get(exc.status_code, str(exc.detail)), headers)


def create_app(config: EmulatorConfig | None = None, stats: EmulatorStats | None = None) -> Starlette:
    """The emulator as an ASGI app. `app.state.emulator` is its EmulatorState (config, stats, store).

    Run it with its lifespan (uvicorn does): shutdown cancels the background prediction tasks.
    """
    state = EmulatorState(config or EmulatorConfig(), stats or EmulatorStats())
    predictions = PredictionRoutes(state)
    routes = [
        *ControlRoutes(state).routes(),
        *MediaRoutes(state).routes(),
        *CdnRoutes(state).routes(),
        *AccountRoutes(state).routes(),
        *WebhookRoutes(state).routes(),
        *predictions.routes(),
        predictions.submit_route(),  # catch-all POST /api/v3/{model_id:path}: last
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    _install_log_filter()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestCounter, stats=state.stats)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.emulator = state
    return app
