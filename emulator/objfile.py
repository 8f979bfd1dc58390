"""Wavefront OBJ output: a mesh as OBJ text (`v`, `vt`, `vn`, `f v/vt/vn`), its MTL, and the zip of
`model.obj` + `model.mtl` + `texture.png` that the realistic profile's v3/v3.1 models return (Tencent's
Hunyuan3D API hands out OBJ results as such a zip)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image

from emulator.meshgen import vertex_normals

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OBJ_NAME = "model.obj"
MTL_NAME = "model.mtl"
TEXTURE_NAME = "texture.png"
MATERIAL_NAME = "material_0"


def _textured(mesh: trimesh.Trimesh) -> tuple[FloatArray, Image.Image]:
    """Per-vertex UVs and the texture image (vertex colours are baked into a texture first)."""
    visual: Any = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals):
        visual = visual.to_texture()
    material = visual.material
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    if not isinstance(image, Image.Image):
        raise ValueError("the mesh has no texture image")
    return np.asarray(visual.uv, dtype=np.float64), image.convert("RGB")


def _rows(prefix: str, values: FloatArray) -> list[str]:
    return [prefix + " ".join(f"{x:.6f}" for x in row) for row in values.tolist()]


def obj_text(mesh: trimesh.Trimesh) -> str:
    """The mesh as a stand-alone OBJ text (no material): `v`, `vt`, `vn`, `f a/a/a b/b/b c/c/c`."""
    uv, _texture = _textured(mesh)
    return _format_obj(mesh, uv, with_material=False)


def _format_obj(mesh: trimesh.Trimesh, uv: FloatArray, with_material: bool) -> str:
    """Every vertex has its own `vt` and `vn` (same index in `f a/a/a`). `with_material` references
    `model.mtl` and its material (the texture travels beside it)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    lines = ["# emulator Hunyuan3D mesh"]
    if with_material:
        lines.append(f"mtllib {MTL_NAME}")
    lines += _rows("v ", vertices)
    lines += _rows("vt ", uv)
    lines += _rows("vn ", vertex_normals(vertices, faces))
    if with_material:
        lines.append(f"usemtl {MATERIAL_NAME}")
    lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in (faces + 1).tolist()]
    return "\n".join(lines) + "\n"


def mtl_text() -> str:
    return "\n".join(
        [
            f"newmtl {MATERIAL_NAME}",
            "Ka 1.000000 1.000000 1.000000",
            "Kd 1.000000 1.000000 1.000000",
            "Ks 0.000000 0.000000 0.000000",
            "d 1.0",
            "illum 1",
            f"map_Kd {TEXTURE_NAME}",
            "",
        ]
    )


def obj_zip(mesh: trimesh.Trimesh) -> bytes:
    """A zip holding `model.obj`, `model.mtl` and `texture.png`, side by side at the top level."""
    uv, texture = _textured(mesh)
    png = io.BytesIO()
    texture.save(png, format="PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(OBJ_NAME, _format_obj(mesh, uv, with_material=True))
        archive.writestr(MTL_NAME, mtl_text())
        archive.writestr(TEXTURE_NAME, png.getvalue())
    return buffer.getvalue()
