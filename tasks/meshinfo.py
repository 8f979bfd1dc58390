"""Verify a GLB file and read its statistics with trimesh."""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import trimesh

from tasks.errors import IncompleteDownloadError

GLB_MAGIC = b"glTF"


@dataclass(frozen=True)
class MeshStats:
    vertices: int
    faces: int
    bounds: list[list[float]] | None  # [[min x, y, z], [max x, y, z]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_glb_header(path: str) -> None:
    """The 12-byte GLB header: magic ``glTF``, version 2, and a declared length equal to the file's."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(12)
    if len(header) < 12 or header[:4] != GLB_MAGIC:
        raise IncompleteDownloadError("not a GLB file (missing the glTF magic)")
    version, declared = struct.unpack("<II", header[4:12])
    if version != 2:
        raise IncompleteDownloadError(f"unsupported GLB version {version}")
    if declared != size:
        raise IncompleteDownloadError(f"GLB declares {declared} bytes but the file has {size}")


def inspect_glb(path: str) -> MeshStats:
    """Check the header, then parse the whole mesh with trimesh; a mesh without faces is rejected."""
    check_glb_header(path)
    try:
        scene = trimesh.load(path, file_type="glb", force="scene")
    except Exception as exc:  # trimesh raises many types for corrupt input
        raise IncompleteDownloadError(f"trimesh cannot read the GLB: {type(exc).__name__}: {exc}") from exc
    if not isinstance(scene, trimesh.Scene):
        raise IncompleteDownloadError(f"trimesh read the GLB as {type(scene).__name__}, not a scene")
    vertices = faces = 0
    for geometry in scene.geometry.values():
        vertices += len(getattr(geometry, "vertices", ()))
        faces += len(getattr(geometry, "faces", ()))
    if faces == 0:
        raise IncompleteDownloadError("the GLB holds no faces")
    bounds = scene.bounds
    return MeshStats(
        vertices=vertices,
        faces=faces,
        bounds=np.asarray(bounds).round(6).tolist() if bounds is not None else None,
    )
