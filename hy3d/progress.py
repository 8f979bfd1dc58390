"""What ``hy3d run`` shows while the flow runs, and which of Prefect's log lines.

On a terminal: a rich progress bar (done/total, failed, dollars spent, ETA), Prefect's log lines
printed above it. Otherwise (a pipe, a file, CI): a plain line every few items or every
``HY3D_PROGRESS_INTERVAL`` seconds (10), such as ``12/400 done, 1 failed, $0.24 spent, ETA 3m``.
``HY3D_FORCE_TERMINAL=1`` draws the bar whatever stdout is (``0``: never).

Prefect's console log loses the flow's and tasks' INFO lines ("Finished in state Completed()", one
line per item): the bar and the summary say the same in less. Warnings and errors stay, and
``--verbose`` brings everything back. Only the console is trimmed: the Prefect API (the UI) still
gets every line.

Sections: the run summary printed at the end, then the progress display.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from flows.progress import RunProgress, reporting_to

if TYPE_CHECKING:
    from flows.progress import ItemOutcome, RunSummary

# ==== The run summary =============================================================================
#
# The end of ``hy3d run``: what did not land and what to do about it, then a small table: the
# items by status, what the run cost (and what comes back), where the run summary and the gallery
# are. A rich table on a terminal; plain aligned text otherwise (logs, CI, pipes).

STATUS_STYLES = {"completed": "green", "already_done": "green", "claimed_elsewhere": "yellow"}


def summary_rows(summary: RunSummary) -> list[tuple[str, str]]:
    """(label, value) pairs: one per status with its count, then cost, summary, gallery."""
    rows = [(status, str(count)) for status, count in sorted(summary.counts.items())]
    if summary.deliverables_failed:
        rows.append(("deliverables", f"{summary.deliverables_failed} not made (meshes kept)"))
    cost = summary.cost_line()
    if cost:
        rows.append(("cost", cost.removeprefix("cost: ")))
    if summary.summary_url:
        rows.append(("summary", summary.summary_url))
    if summary.gallery_url:
        rows.append(("gallery", summary.gallery_url))
    return rows


def plain_table(summary: RunSummary) -> list[str]:
    """The headline, then the rows indented with their values aligned."""
    rows = summary_rows(summary)
    width = max((len(label) for label, _ in rows), default=0)
    counts = len(summary.counts)
    lines = [summary.headline()]
    for index, (label, value) in enumerate(rows):
        # Counts right-aligned among themselves, text values left-aligned after the same gap.
        shown = value.rjust(max(len(v) for _, v in rows[:counts])) if index < counts else value
        lines.append(f"  {label.ljust(width)}  {shown}")
    return lines


def rich_table(summary: RunSummary) -> Table:
    table = Table(
        title=summary.headline(),
        title_justify="left",
        title_style="bold",
        show_header=False,
        box=box.ROUNDED,
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    counts = len(summary.counts)
    for index, (label, value) in enumerate(summary_rows(summary)):
        if index < counts:
            style = STATUS_STYLES.get(label, "red")
            table.add_row(Text(label, style=style), Text(value, style=style), end_section=index == counts - 1)
        else:
            table.add_row(label, Text(value))
    return table


def print_summary(
    summary: RunSummary, *, terminal: bool, out: TextIO | None = None, list_skipped: bool = True
) -> None:
    """``list_skipped=False``: items a stopped run never started are counted, not listed."""
    from flows.progress import ItemStatus, not_landed_lines

    out = out or sys.stdout
    items = [item for item in summary.items if list_skipped or item.status is not ItemStatus.skipped]
    failures = [f"  {line}" for line in not_landed_lines(items)]
    failures += [
        f"  {item.id}: {fmt} not made: {(item.deliverables or {})[fmt]['error']}"
        for item in summary.items
        for fmt in item.failed_deliverables()
    ]
    advice = [f"- {text}" for text in summary.advice]
    if not terminal:
        for line in [*failures, *advice, *plain_table(summary)]:
            print(line, file=out)
        out.flush()
        return
    console = Console(file=out, force_terminal=True, highlight=False)
    if failures:
        console.print("did not land:", style="bold red")
        for line in failures:
            console.print(line, markup=False, soft_wrap=True)
    for line in advice:
        console.print(line, markup=False, style="yellow", soft_wrap=True)
    console.print(rich_table(summary))


# ==== Progress display ============================================================================

FORCE_TERMINAL_ENV = "HY3D_FORCE_TERMINAL"
INTERVAL_ENV = "HY3D_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
# Plain lines: at least one per this fraction of the items, whatever the interval.
PLAIN_LINES_PER_RUN = 20
# The loggers of flow runs and task runs: below WARNING they leave the console unless --verbose.
TASK_RUN_LOGGER = "prefect.task_runs"
RUN_LOGGERS = ("prefect.flow_runs", TASK_RUN_LOGGER)


def use_terminal(stream: TextIO | None = None) -> bool:
    """Draw a bar: ``HY3D_FORCE_TERMINAL`` when set, else whether ``stream`` (stdout) is a terminal."""
    forced = os.environ.get(FORCE_TERMINAL_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def plain_interval_s() -> float:
    try:
        return max(0.1, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def short_duration(seconds: float) -> str:
    """``45s``, ``3m``, ``2h05m``: an estimate, so no more precision than it has."""
    if seconds < 90:
        return f"{max(0, round(seconds))}s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Tally:
    """Counts what finished and estimates what is left. The ETA is the time per item of the items
    that did work (not those already done before this run, which finish at once) times what is left."""

    def __init__(self, total: int, spent: Callable[[], float | None]) -> None:
        self.total = total
        self.spent = spent
        self.done = 0
        self.failed = 0
        self.skipped = 0  # not attempted: the run was stopped (Ctrl-C, a rejected key, the budget)
        self.quick = 0  # already done before this run: they say nothing about the pace
        self.started = time.monotonic()

    def record(self, outcome: ItemOutcome) -> None:
        self.done += 1
        if outcome.status.value == "skipped":
            self.skipped += 1
        elif outcome.status.is_failure:
            self.failed += 1
        if outcome.status.value == "already_done":
            self.quick += 1

    def eta_s(self, now: float | None = None) -> float | None:
        left = self.total - self.done
        if left <= 0:
            return 0.0
        worked = self.done - self.quick
        if worked <= 0:
            return None
        elapsed = (now or time.monotonic()) - self.started
        return elapsed / worked * left

    def spent_text(self) -> str | None:
        spent = self.spent()
        return None if spent is None else f"${spent:.2f} spent"

    def eta_text(self) -> str:
        eta = self.eta_s()
        return "ETA ?" if eta is None else f"ETA {short_duration(eta)}"

    def line(self) -> str:
        """``12/400 done, 1 failed, $0.24 spent, ETA 3m``."""
        parts = [f"{self.done}/{self.total} done", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        spent = self.spent_text()
        if spent:
            parts.append(spent)
        if self.done < self.total:
            parts.append(self.eta_text())
        return ", ".join(parts)


class PlainProgress:
    """One line every ``every`` items or every ``interval_s`` seconds, and one at the end."""

    def __init__(self, out: TextIO, interval_s: float, every: int | None = None) -> None:
        self.out = out
        self.interval_s = interval_s
        self.every = every
        self.tally: Tally | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._last_line = ""
        self._last_done = 0
        self._last_time = 0.0

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        with self._lock:
            self.tally = Tally(total, spent)
            if self.every is None:
                self.every = max(1, math.ceil(total / PLAIN_LINES_PER_RUN))
            self._last_time = time.monotonic()
        self._ticker = threading.Thread(target=self._tick, name="hy3d-progress", daemon=True)
        self._ticker.start()

    def item_finished(self, outcome: ItemOutcome) -> None:
        with self._lock:
            if self.tally is None:
                return
            self.tally.record(outcome)
            if self.tally.done - self._last_done >= (self.every or 1):
                self._print()

    def finish(self) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(5)
        with self._lock:
            if self.tally is not None and self.tally.line() != self._last_line:
                self._print()

    def close(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s)):
            with self._lock:
                if time.monotonic() - self._last_time >= self.interval_s:
                    self._print()

    def _print(self) -> None:  # under the lock
        assert self.tally is not None
        line = self.tally.line()
        self.out.write(line + "\n")
        self.out.flush()
        self._last_line, self._last_done, self._last_time = line, self.tally.done, time.monotonic()


class _TallyColumn(ProgressColumn):
    """A column drawn from the tally (empty until the items start)."""

    def __init__(self, owner: RichProgress, render: Callable[[Tally], Text]) -> None:
        super().__init__()
        self.owner = owner
        self.draw = render

    def render(self, task: Task) -> Text:
        tally = self.owner.tally
        return Text("") if tally is None else self.draw(tally)


def _failed(tally: Tally) -> Text:
    text = Text(f"{tally.failed} failed", style="bold red" if tally.failed else "dim")
    if tally.skipped:
        text.append(f" {tally.skipped} skipped", style="yellow")
    return text


def _spent(tally: Tally) -> Text:
    return Text(tally.spent_text() or "", style="yellow")


def _eta(tally: Tally) -> Text:
    return Text("" if tally.done >= tally.total else tally.eta_text(), style="cyan")


class RichProgress:
    """A live bar on ``console``; from :meth:`open` on it shows a spinner ("starting") until the
    flow says how many items there are."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tally: Tally | None = None
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done"),
            _TallyColumn(self, _failed),
            _TallyColumn(self, _spent),
            _TallyColumn(self, _eta),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
            redirect_stderr=_is_tty(sys.stderr),
        )
        self._task: TaskID | None = None
        self._routed: list[tuple[Any, Any]] = []

    def open(self) -> None:
        self._task = self.progress.add_task("starting", total=None)
        self.progress.start()
        # Rich hides the cursor until the bar stops; a second Ctrl-C leaves at once (os._exit,
        # flows/pipeline.py) and would leave the terminal without one.
        self.console.show_cursor(True)
        self._route_logs()

    def start(self, total: int, spent: Callable[[], float | None]) -> None:
        self.tally = Tally(total, spent)
        if self._task is not None:
            self.progress.reset(self._task, total=total, completed=0, description="meshes")

    def item_finished(self, outcome: ItemOutcome) -> None:
        if self.tally is None or self._task is None:
            return
        self.tally.record(outcome)
        self.progress.update(self._task, completed=self.tally.done)

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if self._task is not None and self.tally is None:
            self.progress.remove_task(self._task)  # ended before any item started: no empty bar left
            self._task = None
        self.progress.stop()
        self._unroute_logs()

    def _route_logs(self) -> None:
        """Prefect's console handlers write to stderr through their own rich consoles; when that is
        this terminal too, their lines go through the bar's console, above the bar."""
        for handler in prefect_console_handlers():
            console = getattr(handler, "console", None)
            if isinstance(console, Console) and _is_tty(console.file):
                self._routed.append((handler, console))
                setattr(handler, "console", _AboveTheBar(console, self.console))  # noqa: B010

    def _unroute_logs(self) -> None:
        while self._routed:
            handler, console = self._routed.pop()
            setattr(handler, "console", console)  # noqa: B010


class _AboveTheBar:
    """Stands in for a log handler's console while the bar is live: renders as that console would
    (its colours and highlighting), prints through the bar's console, above the bar."""

    def __init__(self, own: Console, bar: Console) -> None:
        self.own, self.bar = own, bar

    def print(self, *objects: Any, **options: Any) -> None:
        with self.own.capture() as captured:
            self.own.print(*objects, **options)
        self.bar.print(Text.from_ansi(captured.get()), end="", soft_wrap=True)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def prefect_console_handlers() -> list[logging.Handler]:
    """The handlers that print Prefect's log lines on the console (root's ``console``, uvicorn's…)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        entry for entry in logging.Logger.manager.loggerDict.values() if isinstance(entry, logging.Logger)
    ]
    found: list[logging.Handler] = []
    for each in loggers:
        for handler in each.handlers:
            if isinstance(handler, PrefectConsoleHandler) and handler not in found:
                found.append(handler)
    return found


class QuietRunLogs(logging.Filter):
    """Drops flow- and task-run records below WARNING, and their "Finished in state …" lines at any
    level: the bar counts the tasks' ends, the summary says how the flow ended (a console handler's
    filter, not a logger's: the API handler still sends them to the server)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RUN_LOGGERS):
            return True
        return record.levelno >= logging.WARNING and not str(record.msg).startswith("Finished in state")


class NoTaskTracebacks(logging.Formatter):
    """Formats as ``inner`` does, but a task run's failure without its traceback: the flow catches
    every task's exception and says what it means for the item in its own warning line."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith(TASK_RUN_LOGGER) and (record.exc_info or record.exc_text):
            record = copy.copy(record)  # the record is shared with the other handlers (the API's)
            record.exc_info, record.exc_text = None, None
        return self.inner.format(record)


@contextlib.contextmanager
def quiet_run_logs(verbose: bool) -> Iterator[None]:
    """Prefect's console without the runs' INFO lines and task runs' tracebacks, unless ``verbose``."""
    if verbose:
        yield
        return
    quiet = QuietRunLogs()
    handlers = prefect_console_handlers()
    formatters = [handler.formatter for handler in handlers]
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.addFilter(quiet)
        handler.setFormatter(NoTaskTracebacks(formatter))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, formatters, strict=True):
            handler.removeFilter(quiet)
            handler.setFormatter(formatter)


@contextlib.contextmanager
def run_display(*, verbose: bool, terminal: bool) -> Iterator[RunProgress]:
    """Around a run of the flow in this process (Prefect imported): trims the console log unless
    ``verbose``, and shows the run's progress as a bar (``terminal``) or plain lines on stdout."""
    with quiet_run_logs(verbose):
        listener: RichProgress | PlainProgress
        if terminal:
            listener = RichProgress(terminal_console())
            listener.open()
        else:
            listener = PlainProgress(sys.stdout, plain_interval_s())
        try:
            with reporting_to(listener):
                yield listener
        finally:
            listener.close()


def terminal_console(file: TextIO | None = None) -> Console:
    """A console for stdout, a terminal even through a pipe when ``HY3D_FORCE_TERMINAL`` says so."""
    return Console(file=file or sys.stdout, force_terminal=True if use_terminal(file) else None)
