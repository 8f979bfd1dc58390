"""The end of ``hy3d run``: what did not land and what to do about it, then a small table: the
items by status, what the run cost (and what comes back), where the run summary and the gallery
are. A rich table on a terminal; plain aligned text otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from flows.records import RunSummary

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
    from flows.records import ItemStatus, not_landed_lines

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
