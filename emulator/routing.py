"""Route groups: handlers declare their own path and methods with :func:`route`, so a group's route
table cannot drift from its handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.state import EmulatorState

Handler = TypeVar("Handler", bound=Callable[[Any, Request], Awaitable[Response]])

_ROUTES_ATTRIBUTE = "_emulator_routes"


def route(path: str, *methods: str) -> Callable[[Handler], Handler]:
    """Mark a RouteGroup method as the handler of `path` for `methods` (stack it for more paths)."""

    def mark(handler: Handler) -> Handler:
        marked: list[tuple[str, list[str]]] = getattr(handler, _ROUTES_ATTRIBUTE, [])
        # Decorators apply bottom-up: prepending keeps stacked paths in the order they are written.
        setattr(handler, _ROUTES_ATTRIBUTE, [(path, list(methods)), *marked])
        return handler

    return mark


class RouteGroup:
    """Handlers (methods marked with :func:`route`) that answer from the emulator's shared state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        """The marked handlers' routes, in the order the class defines them."""
        return [
            Route(path, getattr(self, name), methods=methods)
            for name, member in vars(type(self)).items()
            for path, methods in getattr(member, _ROUTES_ATTRIBUTE, ())
        ]
