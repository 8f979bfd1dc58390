"""hy3d's long-lived local Prefect server (hy3d/local_server.py): started on first use, reused, stopped;
stale files, a port in use, two first uses at once, retirement when idle; and configuration errors
that never get as far as a Prefect server.

Every test here has its own HY3D_SERVER_HOME and preferred port, and stops what it started (the
`server_home` fixture checks that no server process is left). They share one PREFECT_HOME, so
Prefect's database is created and migrated once (a start on a fresh database takes twice as long).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from emulator import EmulatorServer
from hy3d import local_server
from tests.conftest import client_env, closed_port
from tests.prefect_server import free_port

HY3D = str(Path(sys.executable).parent / "hy3d")
START_S = 300.0  # generous: a busy 2-core machine has taken a minute to start one


class Home:
    """A private server home, and an environment for `hy3d` processes using it."""

    def __init__(self, tmp_path: Path, prefect_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "hy3d-server"
        self.port = free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_", "WAVESPEED_")) and key != "HY3D_EPHEMERAL"
        }
        self.env.update(
            {
                "HY3D_SERVER_HOME": str(self.path),
                "HY3D_SERVER_PORT": str(self.port),
                "HY3D_SERVER_START_TIMEOUT": str(START_S),
                "PREFECT_HOME": str(prefect_home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
            }
        )
        # The same for calls made in this process.
        monkeypatch.delenv("HY3D_EPHEMERAL", raising=False)
        for key in ("HY3D_SERVER_HOME", "HY3D_SERVER_PORT", "HY3D_SERVER_START_TIMEOUT", "PREFECT_HOME"):
            monkeypatch.setenv(key, self.env[key])

    def hy3d(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HY3D, *args],
            env={**self.env, **(env or {})},
            cwd=self.path.parent,
            capture_output=True,
            text=True,
            timeout=START_S + 120,
            check=False,
        )

    def state(self) -> local_server.ServerState | None:
        return local_server.read_state(self.path)

    def server_pids(self) -> list[int]:
        """Live processes running this home's server (read from /proc)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                ours = local_server.PROCESS_MODULE.encode() in command and str(self.path).encode() in command
                if ours and local_server.pid_alive(int(entry.name)):
                    pids.append(int(entry.name))
        return pids


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def server_home(tmp_path: Path, prefect_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    home = Home(tmp_path, prefect_home, monkeypatch)
    try:
        yield home
    finally:
        local_server.stop(say=lambda _line: None)
        deadline = time.monotonic() + 30
        while home.server_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert home.server_pids() == [], "a test left its local Prefect server running"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def one_image_manifest(samples: Path) -> Path:
    manifest = samples / "one.csv"
    manifest.write_text("id,image\nball,red-ball.png\n")
    return manifest


def test_first_run_starts_the_server_later_runs_reuse_it_and_stop_stops_it(
    server_home: Home, emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = one_image_manifest(samples)
    env = client_env(emulator)
    began = datetime.now(UTC).isoformat()

    first = server_home.hy3d("run", str(manifest), "--output", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "starting a local Prefect server" in first.stderr
    state = server_home.state()
    assert state is not None and local_server.pid_alive(state.pid)
    assert state.port == server_home.port
    assert f"UI http://127.0.0.1:{state.port}" in first.stderr  # where to watch the run
    assert "Traceback" not in first.stderr

    second = server_home.hy3d("run", str(manifest), "--output", str(tmp_path / "b"), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting a local Prefect server" not in second.stderr
    assert f"UI http://127.0.0.1:{state.port}" in second.stderr
    assert server_home.state() == state  # the same server, not a new one
    assert server_home.server_pids() == [state.pid]
    assert (tmp_path / "b" / "ball" / "mesh.glb").exists()
    # Both runs are in that server's history (what its UI shows); neither process is registered now.
    mine = {"flow_runs": {"start_time": {"after_": began}}}
    runs = httpx.post(f"{state.api_url}/flow_runs/filter", json=mine, timeout=30).json()
    assert len(runs) == 2 and {run["state_type"] for run in runs} == {"COMPLETED"}
    assert local_server.live_clients(server_home.path) == []

    status = server_home.hy3d("server", "status")
    assert status.returncode == 0 and f"pid {state.pid}" in status.stdout, status.stdout + status.stderr

    stopped = server_home.hy3d("server", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the local Prefect server" in stopped.stdout
    assert not local_server.pid_alive(state.pid)
    assert server_home.state() is None
    assert "no local Prefect server runs" in server_home.hy3d("server", "stop").stdout


def test_stale_files_are_recognised_without_starting_anything(server_home: Home) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        stale = local_server.ServerState(
            pid=dead.pid, port=port, token="old", started_at=0.0, prefect_version="0", idle_timeout_s=1
        )
        assert local_server.probe(stale, timeout_s=0.5) == "gone"  # its process is dead
        # A live pid that is not a server (pid reused), on a port that answers nothing useful.
        reused = local_server.ServerState(
            pid=os.getpid(), port=port, token="old", started_at=0.0, prefect_version="0", idle_timeout_s=1
        )
        assert local_server.probe(reused, timeout_s=0.5) == "gone"
    assert local_server.status() is None
    assert server_home.server_pids() == []


def test_a_stale_file_and_a_port_in_use_mean_a_new_server_on_another_port(
    server_home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server.json left by a server that died (its pid now another process's: this one), naming the
    preferred port, which something else now holds: a new server starts on a free port, waited for
    with a message."""
    monkeypatch.setattr(local_server, "PROGRESS_EVERY_S", 0.5)
    server_home.path.mkdir(parents=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server_home.port))
        squatter.listen()
        stale = local_server.ServerState(
            pid=os.getpid(),
            port=server_home.port,
            token="from-a-server-that-died",
            started_at=0.0,
            prefect_version="3.9.1",
            idle_timeout_s=3600,
        )
        local_server.write_state(server_home.path, stale)
        said: list[str] = []

        state, started = local_server.ensure(say=said.append, register=False)

        assert started
        assert state.token != stale.token and state.pid != os.getpid()
        assert state.port != server_home.port
        assert local_server.probe(state) == "ready"
        assert any("still waiting for the local Prefect server" in line for line in said), said
        log = (server_home.path / local_server.LOG_FILE).read_text()
        assert f"port {server_home.port} is in use" in log
    assert local_server.stop(say=said.append)
    assert not local_server.pid_alive(state.pid)


def test_two_first_uses_at_once_start_one_server_which_retires_when_idle(server_home: Home) -> None:
    """Two `hy3d server start` at once: one starts it, the other waits and reuses it. It stays up
    while a registered hy3d process lives, and retires once idle with none."""
    server_home.path.mkdir(parents=True)
    client = subprocess.Popen(["sleep", "600"])  # stands for a hy3d run waiting on long predictions
    state: local_server.ServerState | None = None
    try:
        local_server.register_client(server_home.path, client.pid)
        env = {**server_home.env, "HY3D_SERVER_IDLE_TIMEOUT": "2"}
        starts = [
            subprocess.Popen(
                [HY3D, "server", "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=START_S + 60) for process in starts]
        assert [process.returncode for process in starts] == [0, 0], outputs
        said = "".join(out for out, _ in outputs)
        assert said.count("started: ") == 1 and said.count("already running: ") == 1, outputs
        pids = set(re.findall(r"pid (\d+)", said))
        assert len(pids) == 1, outputs
        state = server_home.state()
        assert state is not None and {str(state.pid)} == pids
        assert server_home.server_pids() == [state.pid]

        time.sleep(5)  # over twice the idle timeout: the registered client keeps it up
        assert local_server.probe(state) == "ready"
    finally:
        client.kill()
        client.wait()
    pid = state.pid
    wait_for(lambda: not local_server.pid_alive(pid), 60, "the idle server retires")
    assert server_home.state() is None
    assert "idle for" in (server_home.path / local_server.LOG_FILE).read_text()
    assert local_server.live_clients(server_home.path) == []


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"HY3D_SERVER_START_TIMEOUT": "0.5"}, "did not answer within"),
        (
            {"PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////proc/no-such-dir/prefect.db"},
            "exited while starting",
        ),
    ],
    ids=["too-slow", "crashes"],
)
def test_a_server_that_cannot_start_is_one_line_and_leaves_nothing(
    server_home: Home, setting: dict[str, str], expected: str
) -> None:
    result = server_home.hy3d("server", "start", env=setting)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hy3d: error: ") and expected in last, result.stderr
    assert "PREFECT_API_URL" in last  # what to do instead
    assert all(line.startswith("hy3d: ") for line in result.stderr.strip().splitlines())
    assert server_home.state() is None
    wait_for(lambda: server_home.server_pids() == [], 30, "no server process is left")


CONFIG_ERRORS = {
    "no-key": ({"WAVESPEED_API_KEY": ""}, "WAVESPEED_API_KEY"),
    "rejected-key": ({"WAVESPEED_API_KEY": "wsk-wrong"}, "rejected the API key"),
    "unreachable-api": ({"WAVESPEED_BASE_URL": "closed"}, "cannot reach the WaveSpeed API"),
    "output-is-a-file": ({"output": "file"}, "is a file, not a folder"),
    "bad-manifest": ({"manifest": "bad"}, "image"),
    "unreachable-prefect-api": ({"PREFECT_API_URL": "closed"}, "cannot reach the Prefect API"),
}


@pytest.mark.parametrize("name", list(CONFIG_ERRORS))
def test_configuration_errors_are_one_line_exit_2_and_start_no_server(
    name: str, server_home: Home, emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    changes, expected = CONFIG_ERRORS[name]
    manifest = one_image_manifest(samples)
    output = tmp_path / "out"
    env = client_env(emulator)
    for key, value in changes.items():
        if key == "output":
            (tmp_path / "a-file").write_text("a file, not a folder")
            output = tmp_path / "a-file" / "out"
        elif key == "manifest":
            manifest.write_text("picture,name\nred-ball.png,x\n")
        elif value == "closed":
            env[key] = f"http://127.0.0.1:{closed_port()}" + ("/api" if key == "PREFECT_API_URL" else "")
        else:
            env[key] = value

    result = server_home.hy3d("run", str(manifest), "--output", str(output), env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hy3d: error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "wsk-wrong" not in result.stderr
    assert not server_home.path.exists() or not any(server_home.path.iterdir())  # nothing started
    assert emulator.stats.submits_received == 0


def test_ephemeral_keeps_prefects_temporary_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """HY3D_EPHEMERAL=1: no local server is asked for; Prefect's temporary server is started (in its
    own process group), with a start-up deadline a busy machine can meet."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from hy3d.local_server import EPHEMERAL_STARTUP_TIMEOUT_S

    def refuse(**_: object) -> None:
        raise AssertionError("the local server was asked for")

    monkeypatch.setattr(local_server, "ensure", refuse)
    monkeypatch.setenv("HY3D_EPHEMERAL", "1")
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    started: list[float] = []

    def start_temporary_server() -> None:
        started.append(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())

    monkeypatch.setattr(local_server, "start_temporary_server", start_temporary_server)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), local_server.prefect_api(say=print):
        assert PREFECT_API_URL.value() is None
    assert started == [EPHEMERAL_STARTUP_TIMEOUT_S]  # in its own process group, given time to start
