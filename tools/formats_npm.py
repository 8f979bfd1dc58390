"""The node tools of the web GLB deliverable, installed into the project's ``.cache/formats-npm``.

``--formats web`` runs gltfpack (meshoptimizer's glTF packer, by meshoptimizer's author: mesh
simplification, quantization and ``EXT_meshopt_compression``); tests and ``bench/formats.py`` check
every web GLB with the Khronos glTF-Validator. Both are npm packages, pinned (whole tree, both have no
dependencies) by ``tools/formats-npm/package.json`` and ``package-lock.json``; ``npm ci`` installs
exactly that. They run on Node >= 18 (gltfpack's npm build is WebAssembly: no native code).

Run ``python3 tools/formats_npm.py`` once per checkout (``.ci/run`` does, before the tests); the flow
finds the tools there (or ``HY3D_GLTFPACK``, see ``tasks/deliverables/tools.py``). Standard library
only: it runs before the project's environment exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path(__file__).resolve().parent / "formats-npm"
INSTALL_DIR = ROOT / ".cache" / "formats-npm"
PACKAGES = json.loads((SPEC / "package.json").read_text())["dependencies"]
MIN_NODE_MAJOR = 18


class ToolsUnavailable(RuntimeError):
    """The tools cannot be installed here; the message says why."""


def installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        manifest = INSTALL_DIR / "node_modules" / name / "package.json"
        try:
            versions[name] = str(json.loads(manifest.read_text())["version"])
        except (OSError, ValueError, KeyError):
            versions[name] = None
    return versions


def _node_major() -> int:
    node = shutil.which("node")
    if node is None:
        raise ToolsUnavailable(f"Node.js is not installed (gltfpack needs node >= {MIN_NODE_MAJOR} and npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    try:
        return int(version.stdout.strip().lstrip("v").split(".")[0])
    except ValueError as exc:
        raise ToolsUnavailable(f"cannot read the Node.js version from {version.stdout!r}") from exc


def ensure_installed() -> Path:
    """The ``node_modules`` folder holding the pinned tools, installing them first when missing."""
    major = _node_major()
    if major < MIN_NODE_MAJOR:
        raise ToolsUnavailable(f"gltfpack needs Node.js >= {MIN_NODE_MAJOR}, found {major}")
    if installed_versions() == PACKAGES:
        return INSTALL_DIR / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise ToolsUnavailable("npm is not installed (needed once to install gltfpack)")
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
    if result.returncode != 0 or installed_versions() != PACKAGES:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ToolsUnavailable(f"npm ci of {PACKAGES} failed: {' | '.join(tail)}")
    return INSTALL_DIR / "node_modules"


def main() -> int:
    try:
        modules = ensure_installed()
    except ToolsUnavailable as exc:
        print(f"formats tools: {exc}", file=sys.stderr)
        return 1
    listed = ", ".join(f"{name} {version}" for name, version in PACKAGES.items())
    print(f"{listed}: {modules.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
