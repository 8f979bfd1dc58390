"""hy3d's long-lived local Prefect server: what ad-hoc ``hy3d run``s use when ``PREFECT_API_URL`` is unset.

Prefect's own answer to an unset ``PREFECT_API_URL`` is a temporary server started in every run and
stopped at its end: seconds of start-up per run (docs/performance.md, ``startup``), and on a busy
machine a missed start-up deadline and a traceback. Instead, the first ad-hoc run starts one server
in the background (``python -m hy3d._server_process``, in its own session, output in
``server.log``), and later runs reuse it: a health check instead of a start-up. It serves the
Prefect UI, so a run can be watched there; it stops after ``HY3D_SERVER_IDLE_TIMEOUT`` seconds
without a request or a running ``hy3d`` (default an hour), or with ``hy3d server stop``.
``HY3D_EPHEMERAL=1`` keeps Prefect's temporary server per run.

Its files live in ``HY3D_SERVER_HOME`` (default ``$PREFECT_HOME/hy3d-server``; the database is
Prefect's usual one in ``PREFECT_HOME``):

- ``server.json``: pid, port, a random token and the Prefect version of the running server, written
  by the server once its port is bound, removed when it stops;
- ``server.lock``: an ``flock`` held while a server is started, stopped, reused or retired for
  idleness, so two ``hy3d`` starting at once start one server, and a run never attaches to a server
  that is on its way out;
- ``clients/<pid>``: one file per ``hy3d`` using the server (a run can be silent for many minutes
  while its predictions run; the server does not retire while one of these processes lives);
- ``server.log``: the server's output.

A ``server.json`` whose process is gone, or whose port answers with another token (the pid or the
port reused by something else), is stale: it is removed and a new server started. A preferred port
(``HY3D_SERVER_PORT``, default 4242) in use by something else means another free port.

Importing this module imports neither Prefect nor httpx: a run that reuses the server pays for
neither before it needs them.

Sections: files, processes, clients, start/reuse/stop, then which Prefect server a run uses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.errors import PrefectUnavailableError

ENV_HOME = "HY3D_SERVER_HOME"
ENV_PORT = "HY3D_SERVER_PORT"
ENV_IDLE = "HY3D_SERVER_IDLE_TIMEOUT"
ENV_START_TIMEOUT = "HY3D_SERVER_START_TIMEOUT"
DEFAULT_PORT = 4242
DEFAULT_IDLE_TIMEOUT_S = 3600.0
DEFAULT_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
CLIENTS_FOLDER = "clients"
IDENTITY_PATH = "/_hy3d/server"  # answered by the server process itself, not by Prefect's app
PROCESS_MODULE = "hy3d._server_process"
LOG_MAX_BYTES = 5 * 1024 * 1024
PROGRESS_EVERY_S = 15.0

Say = Callable[[str], None]


def say_on_stderr(line: str) -> None:
    print(f"hy3d: {line}", file=sys.stderr, flush=True)


def _float_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise PrefectUnavailableError(f"{name}={text!r} is not a number of seconds") from None


def server_home() -> Path:
    configured = os.environ.get(ENV_HOME, "").strip()
    if configured:
        return Path(configured).expanduser()
    prefect_home = os.environ.get("PREFECT_HOME", "").strip() or "~/.prefect"
    return Path(prefect_home).expanduser() / "hy3d-server"


def preferred_port() -> int:
    text = os.environ.get(ENV_PORT, "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise PrefectUnavailableError(f"{ENV_PORT}={text!r} is not a port number")
    return int(text)


def idle_timeout_s() -> float:
    return _float_env(ENV_IDLE, DEFAULT_IDLE_TIMEOUT_S)


def start_timeout_s() -> float:
    return _float_env(ENV_START_TIMEOUT, DEFAULT_START_TIMEOUT_S)


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` holds about a running server."""

    pid: int
    port: int
    token: str
    started_at: float  # epoch seconds
    prefect_version: str
    idle_timeout_s: float
    ui: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def ui_url(self) -> str | None:
        return self.url if self.ui else None

    def describe(self) -> str:
        idle = (
            f"after {self.idle_timeout_s / 60:g} min idle" if self.idle_timeout_s > 0 else "never by itself"
        )
        where = f"UI {self.ui_url}" if self.ui_url else f"API {self.api_url}"
        return f"local Prefect server, {where} (pid {self.pid}; stops {idle} or with `hy3d server stop`)"


# ---- files ------------------------------------------------------------------------------------------


def read_state(home: Path) -> ServerState | None:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return ServerState(**{name: data[name] for name in ServerState.__dataclass_fields__ if name in data})
    except (OSError, ValueError, TypeError):
        return None


def write_state(home: Path, state: ServerState) -> None:
    """Atomically: a reader sees the old file, the new one, or none — never half of one."""
    temporary = home / f".{STATE_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(asdict(state)))
    os.replace(temporary, home / STATE_FILE)


def remove_state(home: Path, token: str) -> None:
    """Remove ``server.json`` if it still describes the server with ``token``."""
    state = read_state(home)
    if state is not None and state.token == token:
        with contextlib.suppress(FileNotFoundError):
            (home / STATE_FILE).unlink()


@contextlib.contextmanager
def locked(home: Path, *, timeout_s: float, say: Say | None = None, waiting: str = "") -> Iterator[None]:
    """Hold ``server.lock`` (an ``flock``: released by the kernel if the holder dies)."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        started, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            waited = time.monotonic() - started
            if waited > timeout_s:
                raise PrefectUnavailableError(
                    f"another hy3d has held {home / LOCK_FILE} for over {timeout_s:.0f} s (starting or "
                    f"stopping the local Prefect server); see {home / LOG_FILE}"
                )
            if say is not None and waiting and not told and waited > 0.5:
                say(waiting)
                told = True
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---- processes ---------------------------------------------------------------------------------------

# Servers this process started: a stopped child stays a zombie (signal 0 still reaches it) until reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a process from a later one with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours (see _is_server_process)
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_server_process(pid: int) -> bool:
    """Whether ``pid`` runs ``hy3d._server_process`` (True where /proc cannot tell)."""
    try:
        return PROCESS_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and pid_alive(pid)
    except OSError:
        return False


def _identity(port: int, timeout_s: float) -> dict[str, Any] | None:
    """What the server on ``port`` says it is; None when nothing answers (refused, timeout)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", IDENTITY_PATH)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return {}
        data = json.loads(body)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


Health = Literal["ready", "starting", "gone"]


def probe(state: ServerState, timeout_s: float = 2.0) -> Health:
    """``ready``: the server of ``state`` answers; ``starting``: its process lives but does not answer
    yet; ``gone``: the file is stale (process dead, or the pid or port taken by something else)."""
    if not pid_alive(state.pid):
        return "gone"
    identity = _identity(state.port, timeout_s)
    if identity is not None:
        return "ready" if identity.get("token") == state.token else "gone"
    return "starting" if _is_server_process(state.pid) else "gone"


# ---- clients -------------------------------------------------------------------------------------------


def register_client(home: Path, pid: int | None = None) -> None:
    """Mark process ``pid`` (default: this one) as using the server: it does not retire meanwhile."""
    pid = pid or os.getpid()
    folder = home / CLIENTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(pid)).write_text(_process_start(pid) or "")


def unregister_client(home: Path, pid: int | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / CLIENTS_FOLDER / str(pid or os.getpid())).unlink()


def live_clients(home: Path) -> list[int]:
    """The registered processes still running; the files of the others are removed."""
    alive = []
    folder = home / CLIENTS_FOLDER
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                recorded = entry.read_text().strip()
                if pid_alive(pid) and (not recorded or recorded == (_process_start(pid) or recorded)):
                    alive.append(pid)
                    continue
                entry.unlink()
    return alive


# ---- start, reuse, stop ------------------------------------------------------------------------------


def _server_env() -> dict[str, str]:
    """The server's environment: this one without what a long-lived process must not keep (API keys)
    or must not follow (an API URL), and with the settings of a quiet local server."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WAVESPEED_") and name not in ("PREFECT_API_URL", "PREFECT_API_KEY")
    }
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def _rotate_log(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_MAX_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))


def _last_log_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "(no output)"


def _spawn(home: Path, token: str) -> subprocess.Popen[bytes]:
    log = home / LOG_FILE
    _rotate_log(log)
    command = [
        sys.executable,
        "-m",
        PROCESS_MODULE,
        "--home",
        str(home),
        "--port",
        str(preferred_port()),
        "--token",
        token,
        "--idle-timeout",
        str(idle_timeout_s()),
    ]
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by pid {os.getpid()}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            cwd=home,  # never a folder of the user's (nor its .env)
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is for the run, not for the server
        )
    _children[process.pid] = process
    return process


def _terminate(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM ``pid`` (the server shuts down cleanly), SIGKILL its group if it has not exited after
    ``timeout_s``. True when it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    return not pid_alive(pid)


def _wait_until_ready(
    home: Path,
    token: str,
    process: subprocess.Popen[bytes] | None,
    pid: int,
    deadline: float,
    say: Say,
) -> ServerState:
    started = time.monotonic()
    next_note = started + PROGRESS_EVERY_S
    log = home / LOG_FILE
    while True:
        state = read_state(home)
        if state is not None and state.token == token and probe(state) == "ready":
            return state
        if process is not None and process.poll() is not None:
            _children.pop(process.pid, None)
            raise PrefectUnavailableError(
                f"the local Prefect server exited while starting (exit {process.returncode}): "
                f"{_last_log_line(log)} — see {log}; or set PREFECT_API_URL to a running server"
            )
        if process is None and not pid_alive(pid):
            raise PrefectUnavailableError(
                f"the local Prefect server (pid {pid}) exited while starting; see {log}"
            )
        now = time.monotonic()
        if now > deadline:
            _terminate(pid)
            if state is not None:
                remove_state(home, token)
            raise PrefectUnavailableError(
                f"the local Prefect server did not answer within {now - started:.0f} s (a busy machine?): "
                f"try again, raise {ENV_START_TIMEOUT} (now {start_timeout_s():g} s), or set "
                f"PREFECT_API_URL to a running server; its log: {log}"
            )
        if now > next_note:
            say(f"still waiting for the local Prefect server ({now - started:.0f} s; log {log})")
            next_note = now + PROGRESS_EVERY_S
        time.sleep(0.1)


def _client_prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def ensure(*, say: Say = say_on_stderr, register: bool = True) -> tuple[ServerState, bool]:
    """The running local server, started first if there is none (waiting for it, with a message,
    however long ``HY3D_SERVER_START_TIMEOUT`` allows). With ``register``, this process counts as
    using it until :func:`unregister_client`. Returns the server and whether this call started it.

    Raises :class:`PrefectUnavailableError` (one line) when it cannot start or be reached."""
    home = server_home()
    timeout_s = start_timeout_s()
    deadline = time.monotonic() + timeout_s
    with locked(
        home,
        timeout_s=timeout_s,
        say=say,
        waiting="waiting for the local Prefect server that another hy3d is starting or stopping",
    ):
        state = read_state(home)
        if state is not None:
            health = probe(state)
            if health == "ready" and state.prefect_version != _client_prefect_version():
                if live_clients(home):
                    say(
                        f"the local Prefect server runs Prefect {state.prefect_version}, this hy3d "
                        f"{_client_prefect_version()}; using it while other runs use it"
                    )
                else:
                    say(
                        f"restarting the local Prefect server (Prefect {state.prefect_version} -> "
                        f"{_client_prefect_version()})"
                    )
                    _terminate(state.pid)
                    remove_state(home, state.token)
                    state, health = None, "gone"
            if state is not None and health == "ready":
                if register:
                    register_client(home)
                return state, False
            if state is not None and health == "starting":
                say(f"waiting for the local Prefect server (pid {state.pid}) to answer")
                state = _wait_until_ready(home, state.token, None, state.pid, deadline, say)
                if register:
                    register_client(home)
                return state, False
            if state is not None:  # gone: a stale file (process dead, pid or port reused)
                with contextlib.suppress(FileNotFoundError):
                    (home / STATE_FILE).unlink()
        token = secrets.token_hex(16)
        process = _spawn(home, token)
        say(
            f"starting a local Prefect server for this and later runs (about 10-20 s, once; "
            f"log {home / LOG_FILE})"
        )
        state = _wait_until_ready(home, token, process, process.pid, deadline, say)
        if register:
            register_client(home)
        return state, True


def stop(*, say: Say = say_on_stderr) -> bool:
    """Stop the local server if one runs; True if one was stopped."""
    home = server_home()
    if not (home / STATE_FILE).exists():
        return False
    with locked(home, timeout_s=STOP_TIMEOUT_S + start_timeout_s(), say=say, waiting="waiting for the lock"):
        state = read_state(home)
        if state is None:
            return False
        health = probe(state)
        stopped = False
        if health != "gone" and _is_server_process(state.pid):
            clients = live_clients(home)
            if clients:
                say(f"stopping the local Prefect server while {len(clients)} hy3d run(s) use it")
            if not _terminate(state.pid):
                raise PrefectUnavailableError(f"the local Prefect server (pid {state.pid}) did not stop")
            stopped = True
        remove_state(home, state.token)
        return stopped


def status() -> ServerState | None:
    """The running local server, or None (a stale file is ignored)."""
    state = read_state(server_home())
    if state is None or probe(state) == "gone":
        return None
    return state


# ==== Which Prefect server a run uses =============================================================
#
# Quiet, offline-friendly Prefect defaults, applied before Prefect is imported; and which Prefect API
# a run talks to (:func:`prefect_api`).

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
    long-lived local server (above, in a session of its own: a Ctrl-C for the run
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

    state, _started = ensure(say=say)
    say(state.describe())
    try:
        with temporary_settings({PREFECT_API_URL: state.api_url}):
            yield
    finally:
        unregister_client(server_home())
