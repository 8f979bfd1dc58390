"""A real Prefect server for the session, and helpers to run Prefect processes against it.

Import the ``prefect_server`` fixture from here into a test module. It yields the API URL
(``http://127.0.0.1:<port>/api``) of a ``prefect server start`` subprocess with its own ``PREFECT_HOME``
(so its own SQLite database), started once and stopped (its whole process group) at the end.
Set ``PREFECT_API_DATABASE_CONNECTION_URL`` to run it on another database. It serves the UI too
(``http://127.0.0.1:<port>/``), talking to this API. The ``deployed`` fixture deploys ``prefect.yaml``
to it.

pytest registers a fixture in each module that imports it, so each such module gets its own server
and its own deployments: tests/test_scale.py deploys the same names to another pool without moving
the ones tests/test_deployments.py and tests/test_ui_form.py check.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
SERVER_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
POOL = "hy3d"  # the work pool of prefect.yaml's deployments

T = TypeVar("T")

# Telemetry off, no stray profile: every process gets these.
_QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessEnv(dict[str, str]):
    """An environment for a subprocess; its repr never prints values (pytest shows fixtures on failure)."""

    def __repr__(self) -> str:
        return f"<environment of {len(self)} variables>"


def prefect_env(api_url: str | None, home: Path, extra: Mapping[str, str] | None = None) -> ProcessEnv:
    """This process's environment without any ``PREFECT_*`` setting, then an API URL and a home."""
    env = ProcessEnv({key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")})
    keep = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if keep and api_url is None:  # only the server needs the database
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = keep
    env.update(_QUIET)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_LOGGING_COLORS"] = "false"
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    env.update(extra or {})
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start_group(
    command: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group (it and its children stop together), output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Interrupt the process group (Prefect shuts down cleanly on SIGINT), then kill what is left."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s if sig != signal.SIGKILL else 30)
            break
    # Children that outlived the group leader (flow run subprocesses) go too.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def running(
    command: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess group for the duration of a ``with`` block, stopped even if the block fails."""
    process = start_group(command, env, log, cwd)
    try:
        yield process
    finally:
        stop_group(process)


def wait_healthy(api_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{tail(log)}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"prefect server not healthy after {SERVER_START_TIMEOUT_S:.0f} s:\n{tail(log)}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of a real ``prefect server start`` on loopback, private to this session."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    # The UI finds its API in the server's settings, not from --port: without this it would call
    # 127.0.0.1:4200, whatever (if anything) listens there.
    env = prefect_env(None, home, {"PREFECT_SERVER_UI_ENABLED": "true", "PREFECT_SERVER_UI_API_URL": api_url})
    with running(command, env, log) as process:
        wait_healthy(api_url, process, log)
        yield api_url


def on_server(api_url: str, call: Callable[[PrefectClient], Awaitable[T]]) -> T:
    """Run ``call(client)`` against the given API, in this process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go() -> T:
        async with get_client() as client:
            return await call(client)

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(go())


def read_deployment(api_url: str, name: str) -> DeploymentResponse:
    return on_server(api_url, lambda client: client.read_deployment_by_name(name))


@dataclass(frozen=True)
class Deployed:
    pool: subprocess.CompletedProcess[str]
    deploy: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def deployed(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """``prefect work-pool create`` then ``prefect --no-prompt deploy --all`` from the repo root."""
    env = prefect_env(prefect_server, tmp_path_factory.mktemp("deploy-home"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
        )

    return Deployed(
        pool=cli("work-pool", "create", POOL, "--type", "process"),
        deploy=cli("--no-prompt", "deploy", "--all"),
    )
