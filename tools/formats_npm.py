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

import sys
from pathlib import Path

# Run as a script, this folder is on sys.path.
from npm_tree import CACHE, ROOT, NpmTree, NpmUnavailable

TREE = NpmTree(
    spec=Path(__file__).resolve().parent / "formats-npm",
    install_dir=CACHE / "formats-npm",
    min_node_major=18,
    user="gltfpack",
)


def main() -> int:
    try:
        modules = TREE.ensure_installed()
    except NpmUnavailable as exc:
        print(f"formats tools: {exc}", file=sys.stderr)
        return 1
    listed = ", ".join(f"{name} {version}" for name, version in TREE.packages.items())
    print(f"{listed}: {modules.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
