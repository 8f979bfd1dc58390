"""Ctrl-C and SIGTERM while a flow runs: the first stops the run cleanly, a second exits at once.

A terminal's Ctrl-C (SIGINT to the foreground process group), ``docker stop``, Kubernetes and a
Prefect worker cancelling a flow run (SIGTERM) all end up here while the flow's event loop runs on
the main thread (``hy3d run``, ``asyncio.run(generate_meshes(...))``, a worker's flow run process).
What a stop does is the flow's business (``RunContext.stop(..., interrupt=True)``); this module only
turns the first signal into that call and the second into an immediate exit: the ledger's
write-ahead intent makes even that safe (a submit in flight stays ``submitting``, and the re-run
reports it ``submit_unknown`` instead of paying again).

Elsewhere (another thread, no running loop) signals keep Prefect's and Python's handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def hard_exit(signum: int, _frame: Any = None) -> None:
    """A second signal: leave now, without cleaning up (what is paid for is in the ledger)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(exit_code(signum))


@dataclass
class Interruption:
    """The first SIGINT/SIGTERM of a flow run, and who to tell."""

    signum: int | None = None
    _listeners: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        if self.signum is None:
            return None
        return f"interrupted by {signal.Signals(self.signum).name}"

    def on_stop(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` on the first signal (at once if it came already)."""
        self._listeners.append(listener)
        if self.reason is not None:
            listener(self.reason)

    def received(self, signum: int) -> None:
        if self.signum is not None:
            hard_exit(signum)
        self.signum = signum
        for listener in list(self._listeners):
            listener(self.reason or "interrupted")


@contextlib.asynccontextmanager
async def stop_on_signals() -> AsyncIterator[Interruption]:
    """While the block runs, SIGINT and SIGTERM go to the yielded :class:`Interruption`. After the
    block, a run that was interrupted exits at once on a further signal; one that was not gets
    back the handlers it had (Prefect's SIGTERM bridge, asyncio's or Python's SIGINT handling)."""
    interruption = Interruption()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            try:
                loop.add_signal_handler(sig, interruption.received, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not a Unix selector loop
                break
            installed.append(sig)
    try:
        yield interruption
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            before = previous[sig] if previous[sig] is not None else signal.SIG_DFL
            signal.signal(sig, hard_exit if interruption.signum is not None else before)
