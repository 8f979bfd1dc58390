"""``mesh.stl`` and ``mesh.obj.zip``, written by trimesh.

STL (binary) is for printers: one solid, rotated from glTF's Y up to Z up and set on the build plate
(lowest point at z = 0). STL has no units; slicers read millimetres, glTF's are metres: scale there.
The OBJ zip holds ``mesh.obj`` + ``mesh.mtl`` + its textures, Y up as in the GLB (OBJ's custom)."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np
import trimesh

from tasks.errors import PrintableError

Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])


def vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """The mesh's own vertex normals when the GLB had them, else area-weighted ones (numpy only:
    trimesh's own need scipy, and fall back to a slow loop without it)."""
    cached = mesh._cache.cache.get("vertex_normals")
    if cached is not None and len(cached) == len(mesh.vertices):
        return np.asarray(cached, dtype=np.float64)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    unit: np.ndarray = np.where(length > 0, normals / np.where(length > 0, length, 1.0), [0.0, 1.0, 0.0])
    return unit


def _scene(source: str) -> Any:
    scene: Any = trimesh.load(source, file_type="glb", force="scene", process=False)
    if not isinstance(scene, trimesh.Scene) or not scene.geometry:
        raise PrintableError("the GLB holds no mesh")
    return scene


def build_stl(source: str, folder: str) -> str:
    meshes = [m for m in _scene(source).dump(concatenate=False) if isinstance(m, trimesh.Trimesh)]
    solid: Any = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
    solid = trimesh.Trimesh(vertices=solid.vertices, faces=solid.faces, process=True)
    solid.apply_transform(Y_UP_TO_Z_UP)
    solid.apply_translation([0.0, 0.0, -float(solid.bounds[0][2])])
    target = os.path.join(folder, "mesh.stl")
    solid.export(target, file_type="stl")
    verify_mesh_file(target, "stl")
    return target


def build_obj_zip(source: str, folder: str) -> str:
    scene = _scene(source)
    meshes = [m for m in scene.dump(concatenate=False) if isinstance(m, trimesh.Trimesh)]
    mesh: Any = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
    mesh.vertex_normals = vertex_normals(mesh)
    export: Any = trimesh.exchange.obj.export_obj
    # 6 digits: micrometres for a mesh in metres. Level 1 deflate, the fastest: the OBJ of a v3-sized
    # mesh is tens of megabytes of text (docs/performance.md, "Deliverables").
    text, files = export(
        mesh, include_normals=True, include_texture=True, return_texture=True, mtl_name="mesh.mtl", digits=6
    )
    target = os.path.join(folder, "mesh.obj.zip")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        bundle.writestr("mesh.obj", text)
        for name, data in sorted(files.items()):
            bundle.writestr(name, data)
    verify_obj_zip(target, len(mesh.faces))
    return target


def verify_obj_zip(path: str, faces: int) -> None:
    """The zip reads back (CRCs), ``mesh.obj`` has the mesh's faces and names ``mesh.mtl``, and every
    file the MTL names is in the zip. (Parsing a v3-sized OBJ back with trimesh takes longer than
    writing it; the tests do that.)"""
    with zipfile.ZipFile(path) as bundle:
        broken = bundle.testzip()
        if broken is not None:
            raise PrintableError(f"{broken} in the zip does not read back")
        names = set(bundle.namelist())
        if not {"mesh.obj", "mesh.mtl"} <= names:
            raise PrintableError(f"the zip lacks mesh.obj or mesh.mtl (has {sorted(names)})")
        obj = bundle.read("mesh.obj")
        mtl = bundle.read("mesh.mtl").decode("utf-8", "replace")
    written = obj.count(b"\nf ") + obj.startswith(b"f ")
    if written != faces:
        raise PrintableError(f"mesh.obj has {written} faces, the mesh {faces}")
    if b"mtllib mesh.mtl" not in obj:
        raise PrintableError("mesh.obj does not name mesh.mtl")
    for line in mtl.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("map_") and parts[-1] not in names:
            raise PrintableError(f"mesh.mtl names {parts[-1]}, which is not in the zip")


def verify_mesh_file(path: str, kind: str) -> None:
    """trimesh reads it back with faces (an OBJ zip from its own folder, MTL and texture found;
    :func:`verify_obj_zip` is what a run checks)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hy3d-verify-") as folder:
        target = path
        if kind == "obj":
            with zipfile.ZipFile(path) as bundle:
                bundle.extractall(folder)
            target = os.path.join(folder, "mesh.obj")
        try:
            loaded = trimesh.load(target, file_type=kind, force="mesh", process=False)
        except Exception as exc:
            raise PrintableError(f"trimesh cannot read the {kind}: {type(exc).__name__}: {exc}") from exc
        if not len(getattr(loaded, "faces", ())):
            raise PrintableError(f"the {kind} holds no faces")
