"""Make docs/terminal-progress.svg and .txt: what ``hy3d run`` shows on a terminal, captured from a
real run in tmux against the emulator (24 images, 4 at a time, ~15% of predictions failing).

    uv run python docs/terminal-capture.py        # needs tmux; takes about a minute
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console, Group
from rich.rule import Rule
from rich.text import Text

from emulator import EmulatorConfig, EmulatorServer

DOCS = Path(__file__).resolve().parent
COLUMNS, ROWS = 110, 40
SESSION = "hy3d-capture"


def images(folder: Path, count: int) -> Path:
    rows = ["id,image"]
    for index in range(count):
        image = Image.new("RGB", (256, 256), "white")
        ImageDraw.Draw(image).ellipse((30 + index, 40, 220, 220 - index), fill=(40 + 8 * index, 90, 200))
        image.save(folder / f"photo-{index:02d}.png")
        rows.append(f"photo-{index:02d},photo-{index:02d}.png")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def screen() -> str:
    """The visible pane with its colours, trailing blank lines dropped."""
    return tmux("capture-pane", "-p", "-e", "-t", SESSION).rstrip("\n") + "\n"


def main() -> int:
    config = EmulatorConfig(latency_s=4.0, jitter_s=1.5, failure_rate=0.15, failure_codes=(5003,), seed=3)
    with tempfile.TemporaryDirectory() as work, EmulatorServer(config) as server:
        folder = Path(work)
        images(folder, 24)
        hy3d = Path(sys.executable).parent / "hy3d"
        env = {"WAVESPEED_BASE_URL": server.url, "WAVESPEED_API_KEY": server.api_key}
        command = " ".join(
            [
                *(f"{name}={shlex.quote(value)}" for name, value in env.items()),
                shlex.quote(str(hy3d)),
                "run manifest.csv --output meshes --concurrency 4",
            ]
        )
        shown = "$ hy3d run manifest.csv --output meshes --concurrency 4"
        script = f"clear; echo {shlex.quote(shown)}; {command}; echo __done__; sleep 600"
        if _has_session():
            tmux("kill-session", "-t", SESSION)
        tmux("new-session", "-d", "-s", SESSION, "-x", str(COLUMNS), "-y", str(ROWS), "-c", work, script)
        try:
            during = ""
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = screen()
                if "__done__" in now:
                    break
                text = Text.from_ansi(now).plain
                if not during and "ETA" in text and any(f" {n}/24 done" in text for n in range(8, 16)):
                    during = now  # a few items in: the bar, its ETA, failure lines above it
            final = screen().replace("__done__\n", "")
        finally:
            tmux("kill-session", "-t", SESSION)
    plain = [Text.from_ansi(part).plain for part in (during, final)]
    (DOCS / "terminal-progress.txt").write_text(
        "During the run:\n\n" + plain[0] + "\nAt the end:\n\n" + plain[1]
    )
    console = Console(record=True, width=COLUMNS, force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(
        Group(
            Rule("during the run", style="dim"),
            Text.from_ansi(during),
            Rule("at the end", style="dim"),
            Text.from_ansi(final),
        )
    )
    console.save_svg(str(DOCS / "terminal-progress.svg"), title="hy3d run")
    print(f"wrote {DOCS / 'terminal-progress.svg'} and .txt")
    return 0


def _has_session() -> bool:
    return subprocess.run(["tmux", "has-session", "-t", SESSION], capture_output=True).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
