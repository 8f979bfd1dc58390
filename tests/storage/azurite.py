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
import sys
from pathlib import Path

# tools/ is no package of the project: put it on sys.path, whether this runs as a script or is imported.
TOOLS = str(Path(__file__).resolve().parents[2] / "tools")
if TOOLS not in sys.path:
    sys.path.append(TOOLS)

from npm_tree import CACHE, ROOT, NpmTree, NpmUnavailable  # noqa: E402

SPEC = Path(__file__).resolve().parent / "azurite-npm"
VERSION = json.loads((SPEC / "package.json").read_text())["dependencies"]["azurite"]
TREE = NpmTree(spec=SPEC, install_dir=CACHE / "azurite", min_node_major=20, user=f"azurite {VERSION}")


def blob_executable() -> Path:
    return TREE.node_modules / ".bin" / "azurite-blob"


def ensure_installed() -> Path:
    """The ``azurite-blob`` executable, installing the pinned tree first when it is missing."""
    TREE.ensure_installed(blob_executable())
    return blob_executable()


def main() -> int:
    try:
        executable = ensure_installed()
    except NpmUnavailable as exc:
        print(f"azurite: {exc}", file=sys.stderr)
        return 1
    print(f"azurite {VERSION}: {executable.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
