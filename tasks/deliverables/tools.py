"""Where gltfpack is: ``HY3D_GLTFPACK`` (a gltfpack executable, e.g. a native build), else the
pinned npm build in the checkout's ``.cache/formats-npm`` (``python3 tools/formats_npm.py``) run
with ``node``, else ``gltfpack`` on the PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tasks.errors import GltfpackError

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".cache" / "formats-npm" / "node_modules"
ENV_VAR = "HY3D_GLTFPACK"
INSTALL_HINT = "run `python3 tools/formats_npm.py` (needs node >= 18 and npm) or set HY3D_GLTFPACK"


def gltfpack_command() -> list[str]:
    """The command that runs gltfpack; FileNotFoundError (saying how to install it) when none."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.access(override, os.X_OK):
            raise FileNotFoundError(f"{ENV_VAR}={override} is not an executable file")
        return [override]
    cli = NODE_MODULES / "gltfpack" / "cli.js"
    node = shutil.which("node")
    if cli.is_file() and node:
        return [node, str(cli)]
    on_path = shutil.which("gltfpack")
    if on_path:
        return [on_path]
    if cli.is_file():
        raise FileNotFoundError(f"node is not on the PATH (gltfpack's npm build runs on it); {INSTALL_HINT}")
    raise FileNotFoundError(f"not installed; {INSTALL_HINT}")


def run_gltfpack(arguments: list[str], timeout_s: float = 1800.0) -> str:
    """Run gltfpack with ``arguments``; its output, or GltfpackError with the last lines it printed."""
    command = [*gltfpack_command(), *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GltfpackError(f"gltfpack took more than {timeout_s:.0f} s") from exc
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise GltfpackError(f"gltfpack exited with {result.returncode}: {tail or 'no output'}")
    return result.stdout + result.stderr
