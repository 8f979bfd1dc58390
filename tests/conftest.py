"""Shared fixtures: one Prefect test harness per session, a fresh emulator per test.

Everything runs over real loopback sockets: the project's client talks HTTP to the emulator.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# hy3d's long-lived local Prefect server (hy3d/local_server.py) is for people's ad-hoc runs: a hy3d
# run in the suite without PREFECT_API_URL gets Prefect's temporary server as before, and never
# touches a real home. Only tests/test_local_server.py starts one, in its own folders, and stops it.
os.environ["HY3D_EPHEMERAL"] = "1"
os.environ["HY3D_SERVER_HOME"] = tempfile.mkdtemp(prefix="hy3d-server-home-of-tests-")

import asyncio
import contextlib
import functools
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The flow is imported before any test captures stdout: the log handlers Prefect sets up on the way
# keep the real streams, not a capture that the next test finds closed.
import flows.hunyuan3d  # noqa: F401
from emulator import EmulatorConfig, EmulatorServer
from tasks import client as retrying
from tasks.client import WaveSpeedSettings

SAMPLES = Path(__file__).resolve().parents[1] / "hy3d" / "samples"


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary Prefect API and a private result store (where submit cache records live)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield storage


@pytest.fixture(scope="session", autouse=True)
def _no_local_server_left() -> Iterator[None]:
    """The suite's HY3D_SERVER_HOME is never used for a server (tests that start one have their own)."""
    home = Path(os.environ["HY3D_SERVER_HOME"])
    yield
    leftover = sorted(path.name for path in home.iterdir()) if home.exists() else []
    shutil.rmtree(home, ignore_errors=True)
    assert leftover == [], f"a test used the suite's HY3D_SERVER_HOME: {leftover}"


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    retrying.set_testing(True)
    yield
    retrying.set_testing(False)


# Every emulator URL this session has handed out (see unused_url_emulator).
_EMULATOR_URLS: set[str] = set()


def unused_url_emulator(config: EmulatorConfig) -> EmulatorServer:
    """A started emulator on a port no earlier emulator of this session had.

    Submit cache records (shared by the session's tests, as by separate machines) are keyed by
    content *and API root*: on a reused port, an earlier test's predictions would look paid for
    (seen once: a max-cost test found both of its items "already paid"). Ports the OS hands out
    again are held until a new one comes, then released."""
    reused: list[EmulatorServer] = []
    try:
        while True:
            server = EmulatorServer(config).start()
            if server.url not in _EMULATOR_URLS:
                _EMULATOR_URLS.add(server.url)
                return server
            reused.append(server)
    finally:
        for server in reused:
            server.stop()


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """A fresh emulator (fresh counts) with short latency; the client's env points at it."""
    config = EmulatorConfig(latency_s=0.2, jitter_s=0.05, seed=7)
    with unused_url_emulator(config) as server:
        for name, value in client_env(server).items():
            monkeypatch.setenv(name, value)
        yield server


def settings_for(server: EmulatorServer, **values: Any) -> WaveSpeedSettings:
    """Client settings pointing at ``server`` (its URL and key), with ``values`` set."""
    return WaveSpeedSettings(api_key=server.api_key, base_url=server.url, **values)


def client_env(server: EmulatorServer) -> dict[str, str]:
    return {
        "WAVESPEED_BASE_URL": server.url,
        "WAVESPEED_API_KEY": server.api_key,
        "WAVESPEED_POLL_INITIAL_INTERVAL_S": "0.1",
        "WAVESPEED_POLL_MAX_INTERVAL_S": "0.3",
        "WAVESPEED_WAIT_TIMEOUT_S": "60",
    }


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A private copy of the sample images (tests write manifests next to them)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in SAMPLES.iterdir():
        if image.suffix in {".png", ".jpg"}:
            (folder / image.name).write_bytes(image.read_bytes())
    return folder


@pytest.fixture
def image_server(samples: Path) -> Iterator[str]:
    """A plain static HTTP server on loopback serving the sample images (for URL manifests)."""
    with serve(samples) as url:
        yield url


@pytest.fixture
def missing_image_url(image_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An image URL answering 404, with the client's URL check off (for URLs only WaveSpeed can
    reach): it is submitted and paid for, and WaveSpeed fails the prediction with 1402."""
    monkeypatch.setenv("WAVESPEED_CHECK_IMAGE_URLS", "false")
    return f"{image_server}/missing.png"


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A static HTTP server on loopback over ``folder`` (as a bucket serving the output would);
    yields its base URL and stops it on exit."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_flow(**options: Any) -> tuple[Any, Any]:
    """Run the flow in-process with options named flat (``retry_failed=True``: the flow gets
    ``limits={"retry_failed": True}``); return (final state, RunSummary or the exception it carries)."""
    from flows.hunyuan3d import generate_meshes
    from flows.options import RunOptions, grouped
    from flows.progress import RunFailedError

    async def go() -> tuple[Any, Any]:
        state = await generate_meshes(**grouped(RunOptions, options), return_state=True)
        result = await state.aresult(raise_on_failure=False)
        return state, result.summary if isinstance(result, RunFailedError) else result

    return asyncio.run(go())


def cli_command(args: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The installed ``hy3d`` script and an environment pointing at the session's Prefect API and
    result store, so separate processes share the submit cache as separate machines would."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH

    full_env = {
        **os.environ,
        **env,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
    }
    return [str(Path(sys.executable).parent / "hy3d"), *args], full_env


def run_process(
    command: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end, its output captured as text (its exit code is the test's to check)."""
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command, full_env = cli_command(args, env)
    return run_process(command, full_env, cwd)
