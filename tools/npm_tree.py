"""A pinned npm tree installed with ``npm ci`` into the checkout's ``.cache``: the installer shared by
``tools/formats_npm.py`` (gltfpack, glTF-Validator) and ``tests/storage/azurite.py`` (azurite).

Standard library only: ``.ci/run`` calls both before the project's environment exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"


class NpmUnavailable(RuntimeError):
    """The tree cannot be installed here; the message says why."""


@dataclass(frozen=True)
class NpmTree:
    """The packages that ``spec``'s ``package.json`` and ``package-lock.json`` pin (the whole tree),
    installed into ``install_dir``."""

    spec: Path
    install_dir: Path
    min_node_major: int
    user: str  # what needs the tree, for messages: "gltfpack", "azurite 3.35.0"

    @property
    def packages(self) -> dict[str, str]:
        """The pinned top-level packages: name -> version."""
        return dict(json.loads((self.spec / "package.json").read_text())["dependencies"])

    @property
    def node_modules(self) -> Path:
        return self.install_dir / "node_modules"

    def installed_versions(self) -> dict[str, str | None]:
        """Each pinned package's installed version (None: not installed)."""
        versions: dict[str, str | None] = {}
        for name in self.packages:
            try:
                manifest = json.loads((self.node_modules / name / "package.json").read_text())
                versions[name] = str(manifest["version"])
            except (OSError, ValueError, KeyError):
                versions[name] = None
        return versions

    def ensure_installed(self, *expected: Path) -> Path:
        """``node_modules``, running ``npm ci`` first unless the pinned versions (and the
        ``expected`` files) are there already."""
        major = self._node_major()
        if major < self.min_node_major:
            raise NpmUnavailable(f"{self.user} needs Node.js >= {self.min_node_major}, found {major}")
        if self.installed_versions() == self.packages and all(path.exists() for path in expected):
            return self.node_modules
        npm = shutil.which("npm")
        if npm is None:
            raise NpmUnavailable(f"npm is not installed (needed once to install {self.user})")
        self.install_dir.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(self.spec / name, self.install_dir / name)
        result = subprocess.run(
            [npm, "ci", "--prefix", str(self.install_dir), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0 or self.installed_versions() != self.packages:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise NpmUnavailable(f"npm ci of {self.packages} failed: {' | '.join(tail)}")
        return self.node_modules

    def _node_major(self) -> int:
        node = shutil.which("node")
        if node is None:
            raise NpmUnavailable(
                f"Node.js is not installed ({self.user} needs node >= {self.min_node_major} and npm)"
            )
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
        try:
            return int(version.stdout.strip().lstrip("v").split(".")[0])
        except ValueError as exc:
            raise NpmUnavailable(f"cannot read the Node.js version from {version.stdout!r}") from exc
