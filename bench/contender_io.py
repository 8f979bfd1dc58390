"""What ``bench/baseline.py`` and ``bench/sdk_runner.py`` do alike around the API calls: read the
manifest, pick the mesh among a prediction's outputs, and make its folder in DEST."""

from __future__ import annotations

import csv
from pathlib import Path
from urllib.parse import urlsplit


def read_manifest(path: Path) -> list[tuple[str, Path]]:
    """(id, image path) per row of a CSV with columns id,image (paths relative to the manifest)."""
    with path.open(newline="") as handle:
        return [(row["id"], (path.parent / row["image"]).resolve()) for row in csv.DictReader(handle)]


def glb_output(outputs: list[str]) -> str | None:
    """The first ``.glb`` URL among a prediction's outputs."""
    return next((url for url in outputs if urlsplit(url).path.lower().endswith(".glb")), None)


def mesh_target(dest: Path, item_id: str) -> Path:
    """``DEST/<id>/mesh.glb``, its folder made."""
    folder = dest / item_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "mesh.glb"
