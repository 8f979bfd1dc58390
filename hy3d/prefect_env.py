"""Quiet, offline-friendly Prefect defaults, applied before Prefect is imported."""

from __future__ import annotations

import os

DEFAULTS = {
    # No telemetry from a tool that may run in closed networks (it also causes SQLite lock errors).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


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
