"""Run the emulator app with uvicorn in a background thread, on a socket bound here (port 0 = any)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from emulator.app import create_app
from emulator.config import EmulatorConfig
from emulator.state import EmulatorState
from emulator.stats import EmulatorStats

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0


class EmulatorServer:
    """A live emulator on loopback. Use as a context manager, or start()/stop().

    `config` is shared with the running app: change its fields at any time.
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.stats = EmulatorStats()
        self.app = create_app(self.config, self.stats)
        self.state: EmulatorState = self.app.state.emulator
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # ---- facts -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. http://127.0.0.1:54321."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(256)
        except OSError:
            sock.close()
            raise
        return sock

    def start(self) -> EmulatorServer:
        """Bind, serve in a daemon thread, return once the server answers HTTP."""
        if self.running:
            return self
        sock = self._bind()
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        server_config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(server_config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"emulator-{self.port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        assert self._server is not None and self._thread is not None
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("emulator server thread exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("emulator server did not start")
            time.sleep(0.005)
        with httpx.Client(timeout=5.0) as client:
            client.get(f"{self.url}/_emulator/health").raise_for_status()

    def _run_on_loop(self, make: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
        loop = self.state.loop
        if loop is None or loop.is_closed() or not self.running:
            return
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout)

    def stop(self) -> None:
        """Cancel pending predictions, shut uvicorn down, join its thread. Idempotent."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None and thread.is_alive():
            self._run_on_loop(self.state.cancel_tasks, 5.0)
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_S)
            if thread.is_alive():  # pragma: no cover - only when a connection refuses to finish
                server.force_exit = True
                thread.join(_STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server, self._thread, self._socket = None, None, None

    def reset(self) -> None:
        """Forget predictions, uploads and outputs; zero the stats (the config is kept)."""
        if self.running:
            self._run_on_loop(self.state.reset, 10.0)
        else:
            self.state.store.clear()
            self.stats.reset()
            self.state.reseed()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
