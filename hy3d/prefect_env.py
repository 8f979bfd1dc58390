"""Quiet, offline-friendly Prefect defaults, applied before Prefect is imported; and which Prefect API
a run talks to (:func:`prefect_api`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from tasks.errors import PrefectUnavailableError

DEFAULTS = {
    # No telemetry from a tool that may run in closed networks (it also causes SQLite lock errors).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
EPHEMERAL = "HY3D_EPHEMERAL"
# Prefect's temporary server (HY3D_EPHEMERAL=1) gets this long to start instead of Prefect's 20 s,
# which a busy machine misses.
EPHEMERAL_STARTUP_TIMEOUT_S = 120


def apply_defaults() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def start_temporary_server() -> None:
    """Without ``PREFECT_API_URL``, start Prefect's temporary server now, in its own process group.

    Prefect starts it on first use as a plain child, in our process group: a terminal's Ctrl-C (sent
    to the whole foreground group) or ``kill -TERM -<pgid>`` stopped it under the run, which then
    could not report anything and hung retrying. In its own group it only gets what is meant for it;
    it is stopped at exit as Prefect's is, and stops by itself if this process dies without stopping
    it (a second Ctrl-C exits at once, SIGKILL) — see :mod:`hy3d.temporary_server`.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from hy3d.temporary_server import OwnGroupServer

    OwnGroupServer().start()


def ephemeral_requested() -> bool:
    return os.environ.get(EPHEMERAL, "").strip().lower() in ("1", "true", "yes", "on")


def _check_reachable(api_url: str) -> None:
    """A configured API that refuses connections (or whose host does not resolve) is one line, not
    a traceback from deep in the flow engine. Any HTTP answer will do: the flow deals with it."""
    import httpx

    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=httpx.Timeout(15.0, connect=5.0))
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
        raise PrefectUnavailableError(
            f"cannot reach the Prefect API at PREFECT_API_URL={api_url} ({type(exc).__name__}: {exc}): "
            "start that server, or unset PREFECT_API_URL to use hy3d's local one"
        ) from None
    except httpx.HTTPError:
        pass  # slow, or an answer: let the flow engine have its own go


@contextlib.contextmanager
def prefect_api(say: Callable[[str], None]) -> Iterator[None]:
    """Within this block Prefect talks to: ``PREFECT_API_URL`` when it is set (environment or Prefect
    profile; checked to accept connections); Prefect's temporary server, started now in its own
    process group (:func:`start_temporary_server`), when ``HY3D_EPHEMERAL=1``; otherwise hy3d's
    long-lived local server (:mod:`hy3d.local_server`, in a session of its own: a Ctrl-C for the run
    does not reach it either), started now if none runs, this process registered as using it.

    Raises :class:`~tasks.errors.PrefectUnavailableError` (one line)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    configured = PREFECT_API_URL.value()
    if configured:
        _check_reachable(str(configured))
        yield
        return
    if ephemeral_requested():  # asked for: Prefect's own log line says it starts
        updates = {}
        if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
            updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_STARTUP_TIMEOUT_S
        with temporary_settings(updates):
            try:
                start_temporary_server()
            except RuntimeError as exc:  # Prefect's "Timed out while attempting to connect..."
                raise PrefectUnavailableError(
                    f"Prefect's temporary server did not start: {str(exc).splitlines()[0][:200]} — unset "
                    f"{EPHEMERAL} to use hy3d's long-lived local server, or set PREFECT_API_URL"
                ) from None
            yield
        return

    from hy3d import local_server

    state, _started = local_server.ensure(say=say)
    say(state.describe())
    try:
        with temporary_settings({PREFECT_API_URL: state.api_url}):
            yield
    finally:
        local_server.unregister_client(local_server.server_home())
