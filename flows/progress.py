"""Who hears about a run's items as they finish: a listener the flow calls, a no-op by default.

The flow says when its items start, as each one finishes and when the last has; what to show for it
(a terminal bar, plain lines) is up to whoever runs the flow in its own process: ``hy3d run``
installs a listener around its run with :func:`reporting_to`. Deployments, workers and tests get the
no-op. A listener that raises is switched off with one warning: it never fails the run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from flows.records import ItemOutcome

logger = logging.getLogger("hy3d.progress")


class RunProgress(Protocol):
    """What a run reports as it goes. Called on the flow's event loop: return quickly."""

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        """``total`` items are about to run; ``spent()`` is what the run has been billed so far
        (USD; None when unknown), read whenever the listener wants it."""

    def item_finished(self, outcome: ItemOutcome) -> None:
        """One item is done, whatever its status."""

    def finish(self) -> None:
        """Every item is done (or the run is ending early)."""


class NoProgress:
    """The default: nobody is listening."""

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        pass

    def item_finished(self, outcome: ItemOutcome) -> None:
        pass

    def finish(self) -> None:
        pass


class _Guarded:
    """Calls the listener; the first exception it raises is logged and silences it for good."""

    def __init__(self, listener: RunProgress) -> None:
        self._listener: RunProgress | None = listener

    def _call(self, call: Callable[[RunProgress], None]) -> None:
        if self._listener is None:
            return
        try:
            call(self._listener)
        except Exception as exc:
            logger.warning("progress display switched off: %s: %s", type(exc).__name__, exc)
            self._listener = None

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        self._call(lambda listener: listener.start(total, spent))

    def item_finished(self, outcome: ItemOutcome) -> None:
        self._call(lambda listener: listener.item_finished(outcome))

    def finish(self) -> None:
        self._call(lambda listener: listener.finish())


_current: RunProgress = NoProgress()


def current_progress() -> RunProgress:
    """The installed listener (guarded), for one run."""
    return _Guarded(_current)


@contextlib.contextmanager
def reporting_to(listener: RunProgress) -> Iterator[RunProgress]:
    """Runs of the flow in this process report to ``listener`` until the block exits."""
    global _current
    previous, _current = _current, listener
    try:
        yield listener
    finally:
        _current = previous
