"""The process of hy3d's local Prefect server (see :mod:`hy3d.local_server`), started by ``hy3d``:
``python -m hy3d._server_process --home DIR --port PORT --token TOKEN --idle-timeout SECONDS``.

Binds its port first (the preferred one, or any free one when that is taken) and records itself in
``server.json``; then imports Prefect's server and serves its API and UI with uvicorn on that socket,
answering ``/_hy3d/server`` itself (its pid and token: how ``hy3d`` tells it from whatever else could
hold that port or pid later). It retires after ``--idle-timeout`` seconds with no request in flight,
none received, and no ``hy3d`` registered as using it; SIGTERM (``hy3d server stop``) stops it at once.
Both shut Prefect down cleanly and remove ``server.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hy3d.local_server import (
    IDENTITY_PATH,
    LOCK_FILE,
    ServerState,
    live_clients,
    read_state,
    remove_state,
    write_state,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


def bind(port: int) -> socket.socket:
    """A loopback socket on ``port``, or on a free port when that one is taken."""
    for candidate in (port, 0) if port else (0,):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or candidate == 0:
                raise
            print(f"port {port} is in use: taking a free one", flush=True)
            continue
        sock.set_inheritable(True)
        return sock
    raise AssertionError("port 0 always binds or raises")


class Activity:
    """ASGI middleware: counts requests in flight and dates the last one; answers IDENTITY_PATH."""

    def __init__(self, app: ASGIApp, identity: dict[str, Any]) -> None:
        self.app = app
        self.identity = json.dumps(identity).encode()
        self.in_flight = 0
        self.last = time.monotonic()

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and scope["path"] == IDENTITY_PATH:  # hy3d checking: it counts
            self.last = time.monotonic()
            headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.identity})
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        self.last = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.last = time.monotonic()

    def idle_s(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last


def retire_when_idle(home: Path, token: str, activity: Activity, idle_timeout_s: float, stop: Any) -> None:
    """Watchdog thread: once idle long enough, take the lock (so no ``hy3d`` attaches meanwhile),
    check again, remove ``server.json`` and ask uvicorn to exit. The lock stays held until this
    process exits: a ``hy3d`` arriving now waits, then starts a new server."""
    every = min(30.0, max(0.2, idle_timeout_s / 5))
    while not stop.should_exit:
        time.sleep(every)
        if activity.idle_s() < idle_timeout_s or live_clients(home):
            continue
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # someone is attaching, starting or stopping: look again later
            continue
        if activity.idle_s() < idle_timeout_s or live_clients(home):
            os.close(fd)
            continue
        print(f"idle for {activity.idle_s():.0f} s with no hy3d running: stopping", flush=True)
        remove_state(home, token)
        stop.should_exit = True
        return  # fd left open: released at exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hy3d._server_process")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    home: Path = args.home

    sock = bind(args.port)
    port = sock.getsockname()[1]
    configure_prefect_server(port)
    state = ServerState(
        pid=os.getpid(),
        port=port,
        token=args.token,
        started_at=time.time(),
        prefect_version=version("prefect"),
        idle_timeout_s=args.idle_timeout,
        ui=ui_enabled(),
    )
    write_state(home, state)
    print(f"bound 127.0.0.1:{port}, pid {os.getpid()}; starting Prefect {state.prefect_version}", flush=True)
    try:
        serve(sock, home, state, args.idle_timeout)
    finally:
        with contextlib.suppress(Exception):
            current = read_state(home)
            if current is not None and current.token == state.token:
                remove_state(home, state.token)
        print("stopped", flush=True)
    return 0


def configure_prefect_server(port: int) -> None:
    """Prefect's server settings, before Prefect is imported. The scheduler, late-run marker and
    worker foreman serve deployments and workers: ad-hoc runs have neither."""
    os.environ.update(
        {
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_UI_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
            "PREFECT__SERVER_FINAL": "1",
        }
    )
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")


def ui_enabled() -> bool:
    """Whether Prefect's server will serve its UI, as its settings in the environment say."""
    ui = os.environ.get("PREFECT_UI_ENABLED", os.environ.get("PREFECT_SERVER_UI_ENABLED", "true"))
    return ui.strip().lower() not in ("0", "false", "no", "off")


def serve(sock: socket.socket, home: Path, state: ServerState, idle_timeout_s: float) -> None:
    """Serve Prefect's API and UI on ``sock`` until SIGTERM or, with a positive ``idle_timeout_s``,
    until idle that long (:func:`retire_when_idle`)."""
    import uvicorn
    from prefect.server.api.server import create_app

    activity = Activity(create_app(final=True), {"pid": state.pid, "token": state.token})
    config = uvicorn.Config(
        activity,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if idle_timeout_s > 0:
        threading.Thread(
            target=retire_when_idle,
            args=(home, state.token, activity, idle_timeout_s, server),
            name="hy3d-idle",
            daemon=True,
        ).start()
    # uvicorn shuts down on SIGTERM, then raises it again with the handler found before: this one
    # ends the process through the `finally` of main.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
