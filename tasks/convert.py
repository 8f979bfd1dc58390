"""Turn a mesh WaveSpeed delivered in another format into a GLB, textures kept.

v3 models may answer with an OBJ packed in a zip with its MTL and textures (Tencent's Rapid API:
"usually points to a .zip package"), older deployments with a bare OBJ. trimesh reads them; the
GLB it writes is then verified like any downloaded mesh. Blocking: call it from a worker thread.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import zipfile

from tasks.errors import IncompleteDownloadError, MeshConversionError
from tasks.fetch import MESH_KINDS, extension_kind, mesh_rank

ZIP_MAX_BYTES = 4 * 1024**3  # unpacked; more is refused (a zip bomb, not a mesh)


def _unpack(archive: str, folder: str) -> str:
    """Extract ``archive`` into ``folder`` and return the path of its best mesh file."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            if sum(info.file_size for info in members) > ZIP_MAX_BYTES:
                raise MeshConversionError(f"the zip unpacks to more than {ZIP_MAX_BYTES} bytes")
            names = []
            for info in members:
                name = posixpath.normpath(info.filename.replace("\\", "/"))
                if name.startswith(("/", "../")) or name == ".." or "__MACOSX" in name:
                    continue  # never written outside the folder; resource forks are not meshes
                target = os.path.join(folder, *name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with bundle.open(info) as source, open(target, "wb") as sink:
                    while chunk := source.read(1024 * 1024):
                        sink.write(chunk)
                names.append(name)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise IncompleteDownloadError(f"the zip is damaged: {exc}") from exc
    meshes = [name for name in names if extension_kind(name) in MESH_KINDS and extension_kind(name) != "zip"]
    if not meshes:
        raise MeshConversionError(f"the zip holds no mesh (files: {', '.join(sorted(names)[:5]) or 'none'})")
    best = min(meshes, key=lambda name: (mesh_rank(extension_kind(name)), name.count("/"), name))
    return os.path.join(folder, *best.split("/"))


def convert_to_glb(source: str, kind: str, target: str) -> None:
    """Write ``source`` (a mesh of ``kind``, see :mod:`tasks.fetch`) to ``target`` as a GLB."""
    import trimesh  # only when a mesh needs converting

    with tempfile.TemporaryDirectory(prefix="hy3d-convert-") as folder:
        path = source
        if kind == "zip":
            path = _unpack(source, folder)
            kind = extension_kind(path) or kind
        elif kind in ("obj", "gltf"):
            # trimesh finds an OBJ's MTL and textures (or a glTF's buffers) beside the file, by name.
            path = os.path.join(folder, f"mesh.{kind}")
            os.symlink(os.path.abspath(source), path)
        try:
            scene = trimesh.load(path, file_type=kind, force="scene")
        except Exception as exc:  # trimesh raises many types for input it cannot read
            reason = f"{type(exc).__name__}: {exc}"
            raise MeshConversionError(f"trimesh cannot read the {kind} mesh: {reason}") from exc
        if not isinstance(scene, trimesh.Scene) or not any(
            len(getattr(geometry, "faces", ())) for geometry in scene.geometry.values()
        ):
            raise MeshConversionError(f"the {kind} mesh holds no faces")
        try:
            data = scene.export(file_type="glb")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise MeshConversionError(f"could not write a GLB: {type(exc).__name__}: {exc}") from exc
    with open(target, "wb") as handle:
        handle.write(data)
