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
