"""Azurite (the Azure Blob Storage emulator, from npm) installed into the project's ``.cache/azurite``.

The version is pinned, with its whole dependency tree, by ``tests/storage/azurite-npm/package.json`` and
``package-lock.json``; ``npm ci`` installs exactly that tree. azurite 3.36+ needs Node >= 21, so 3.35.0
it is (Node 20 is what the machines have).

Used by the storage test fixtures (installs on first use when missing) and by ``.ci/run``
(``python3 tests/storage/azurite.py``, before the tests, so CI never skips Azure). Standard library
only: ``.ci/run`` calls it before the project's environment exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).resolve().parent / "azurite-npm"
INSTALL_DIR = ROOT / ".cache" / "azurite"
VERSION = json.loads((SPEC / "package.json").read_text())["dependencies"]["azurite"]
MIN_NODE_MAJOR = 20


class AzuriteUnavailable(RuntimeError):
    """Azurite cannot be installed or run here; the message says why."""


def blob_executable() -> Path:
    return INSTALL_DIR / "node_modules" / ".bin" / "azurite-blob"


def installed_version() -> str | None:
    manifest = INSTALL_DIR / "node_modules" / "azurite" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _node_major() -> int:
    node = shutil.which("node")
    if node is None:
        raise AzuriteUnavailable("Node.js is not installed (azurite needs node >= 20 and npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    text = version.stdout.strip().lstrip("v")
    try:
        return int(text.split(".")[0])
    except ValueError as exc:
        raise AzuriteUnavailable(f"cannot read the Node.js version from {version.stdout!r}") from exc


def ensure_installed() -> Path:
    """The ``azurite-blob`` executable, installing the pinned tree first when it is missing."""
    major = _node_major()
    if major < MIN_NODE_MAJOR:
        raise AzuriteUnavailable(f"azurite {VERSION} needs Node.js >= {MIN_NODE_MAJOR}, found {major}")
    if installed_version() == VERSION and blob_executable().exists():
        return blob_executable()
    npm = shutil.which("npm")
    if npm is None:
        raise AzuriteUnavailable("npm is not installed (needed once to install azurite)")
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SPEC / name, INSTALL_DIR / name)
    result = subprocess.run(
        [npm, "ci", "--prefix", str(INSTALL_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or installed_version() != VERSION:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise AzuriteUnavailable(f"npm ci of azurite {VERSION} failed: {' | '.join(tail)}")
    return blob_executable()


def main() -> int:
    try:
        executable = ensure_installed()
    except AzuriteUnavailable as exc:
        print(f"azurite: {exc}", file=sys.stderr)
        return 1
    print(f"azurite {VERSION}: {executable.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
