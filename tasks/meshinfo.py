"""Verify a GLB file and read its statistics.

Up to ``FULL_PARSE_MAX_BYTES`` the whole mesh is parsed by trimesh (vertices, faces, bounds of the
scene). Larger files are checked structurally instead — header, JSON chunk, every buffer view inside
the binary chunk, accessor counts, and the bounds glTF requires on POSITION — reading only the JSON:
parsing a 100 MB mesh whole costs several times its size in memory, and fifty at once would not
fit. Full parses are also limited to a few at a time.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import asdict, dataclass
from typing import Any

from tasks.errors import IncompleteDownloadError

GLB_MAGIC = b"glTF"
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
FULL_PARSE_MAX_BYTES = 64 * 1024 * 1024
FULL_PARSE_SLOTS = threading.BoundedSemaphore(2)
TRIANGLES = 4


@dataclass(frozen=True)
class MeshStats:
    vertices: int
    faces: int
    bounds: list[list[float]] | None  # [[min x, y, z], [max x, y, z]]
    parsed_by: str = "trimesh"  # or "gltf-json" for large files (see the module docstring)

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
    """Check the header, then read the statistics (trimesh, or the glTF JSON for large files);
    a mesh without faces is rejected."""
    check_glb_header(path)
    if os.path.getsize(path) > FULL_PARSE_MAX_BYTES:
        return inspect_glb_structure(path)
    with FULL_PARSE_SLOTS:
        return _parse_with_trimesh(path)


def _parse_with_trimesh(path: str) -> MeshStats:
    import numpy as np  # imported by the first mesh, not by every command that imports the flow
    import trimesh

    try:
        # process=False: the statistics of the file as delivered (no vertex merging), at a third
        # of the CPU.
        scene = trimesh.load(path, file_type="glb", force="scene", process=False)
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


def inspect_glb_structure(path: str) -> MeshStats:
    """Statistics from the JSON chunk, after checking that every buffer view lies inside the BIN
    chunk. Reads the header and JSON only."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        handle.seek(12)
        json_length, json_type = struct.unpack("<II", handle.read(8))
        if json_type != JSON_CHUNK or 20 + json_length > size:
            raise IncompleteDownloadError("GLB without a valid JSON chunk")
        try:
            document = json.loads(handle.read(json_length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IncompleteDownloadError(f"GLB JSON chunk does not parse: {exc}") from exc
        bin_offset = 20 + json_length
        bin_length = 0
        if bin_offset < size:
            handle.seek(bin_offset)
            bin_length, bin_type = struct.unpack("<II", handle.read(8))
            if bin_type != BIN_CHUNK or bin_offset + 8 + bin_length > size:
                raise IncompleteDownloadError("GLB binary chunk is truncated or malformed")
    views = document.get("bufferViews", [])
    for index, view in enumerate(views):
        end = int(view.get("byteOffset", 0)) + int(view.get("byteLength", 0))
        if view.get("buffer", 0) == 0 and end > bin_length:
            raise IncompleteDownloadError(f"buffer view {index} ends past the binary chunk")
    accessors = document.get("accessors", [])
    vertices = faces = 0
    low: list[float] | None = None
    high: list[float] | None = None
    for mesh in document.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            position = accessors[primitive["attributes"]["POSITION"]]
            count = int(position["count"])
            vertices += count
            if primitive.get("mode", TRIANGLES) == TRIANGLES:
                indices = primitive.get("indices")
                faces += int(accessors[indices]["count"]) // 3 if indices is not None else count // 3
            if "min" in position and "max" in position:
                low = (
                    [min(a, b) for a, b in zip(low, position["min"], strict=True)]
                    if low
                    else list(position["min"])
                )
                high = (
                    [max(a, b) for a, b in zip(high, position["max"], strict=True)]
                    if high
                    else list(position["max"])
                )
    if faces == 0:
        raise IncompleteDownloadError("the GLB holds no faces")
    bounds = [[round(v, 6) for v in low], [round(v, 6) for v in high]] if low and high else None
    return MeshStats(vertices=vertices, faces=faces, bounds=bounds, parsed_by="gltf-json")
