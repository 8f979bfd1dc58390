"""Prefect's temporary API server for ``hy3d run``, in its own process group (see
:func:`hy3d.local_server.start_temporary_server`).

Run as ``python -m hy3d.temporary_server PARENT_PID <uvicorn arguments>``: it serves Prefect's app as
Prefect's own temporary server does, and stops (SIGTERM to itself: uvicorn's graceful shutdown) when
PARENT_PID is no longer its parent, as no process group or terminal ties it to the run any more.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from prefect.server.api.server import SubprocessASGIServer

PARENT_CHECK_S = 1.0


class OwnGroupServer(SubprocessASGIServer):
    """Prefect's ``SubprocessASGIServer`` (registered as the one every client of this process
    uses), its process started in a new process group under :func:`main`. The command is Prefect
    3.9's, with this module in front of uvicorn."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        import prefect
        from prefect.settings import get_current_settings

        return subprocess.Popen(
            args=[
                sys.executable,
                "-m",
                "hy3d.temporary_server",
                str(os.getpid()),
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            },
            stdin=subprocess.DEVNULL,
            process_group=0,  # a new group: signals for the run's group do not reach it
        )


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parent = int(sys.argv[1])
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    sys.argv = ["uvicorn", *sys.argv[2:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
