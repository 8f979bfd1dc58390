"""The output files of a prediction (CPU work: run it in a worker thread)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

from emulator.glb import pad_glb
from emulator.meshgen import TEXTURE_PX, image_mesh, mesh_to_glb, prompt_mesh
from emulator.objfile import obj_text, obj_zip

PNG_TYPE = "image/png"
_PREVIEW_PX = 256


class MeshFormat(StrEnum):
    GLB = "glb"
    OBJ = "obj"
    """Plain OBJ text, no material."""
    OBJ_ZIP = "obj-zip"
    """model.obj + model.mtl + texture.png in a zip."""


@dataclass(frozen=True)
class OutputFile:
    extension: str
    content_type: str
    format: str
    """What the file is, as the realistic profile's output objects name it: png, glb, obj."""
    data: bytes
    is_mesh: bool


def _preview_png(image_bytes: bytes | None, prompt: str) -> bytes:
    if image_bytes is not None:
        with Image.open(io.BytesIO(image_bytes)) as opened:
            preview = opened.convert("RGB")
        preview.thumbnail((_PREVIEW_PX, _PREVIEW_PX))
    else:
        digest = hashlib.sha256(prompt.encode("utf-8")).digest()
        preview = Image.new("RGB", (_PREVIEW_PX, _PREVIEW_PX), (digest[0], digest[1], digest[2]))
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    return buffer.getvalue()


def _mesh_file(
    image_bytes: bytes | None,
    prompt: str,
    grid: int,
    mesh_bytes_target: int | None,
    mesh_format: MeshFormat,
    texture_px: int = TEXTURE_PX,
) -> OutputFile:
    mesh = image_mesh(image_bytes, grid, texture_px) if image_bytes is not None else prompt_mesh(prompt, grid)
    if mesh_format is MeshFormat.OBJ_ZIP:
        return OutputFile(".zip", "application/zip", "obj", obj_zip(mesh), is_mesh=True)
    if mesh_format is MeshFormat.OBJ:
        return OutputFile(".obj", "model/obj", "obj", obj_text(mesh).encode("utf-8"), is_mesh=True)
    glb = mesh_to_glb(mesh)
    if mesh_bytes_target:
        glb = pad_glb(glb, mesh_bytes_target)
    return OutputFile(".glb", "model/gltf-binary", "glb", glb, is_mesh=True)


def render_outputs(
    image_bytes: bytes | None,
    prompt: str,
    grid: int,
    mesh_bytes_target: int | None,
    with_preview: bool,
    mesh_format: MeshFormat = MeshFormat.GLB,
    texture_px: int = TEXTURE_PX,
) -> list[OutputFile]:
    """The mesh (from the image when given, else from the prompt; a GLB padded to `mesh_bytes_target`
    when set), and optionally a preview image listed first, so that `outputs[0]` is not the mesh."""
    files = [_mesh_file(image_bytes, prompt, grid, mesh_bytes_target, mesh_format, texture_px)]
    if with_preview:
        files.insert(0, OutputFile(".png", PNG_TYPE, "png", _preview_png(image_bytes, prompt), is_mesh=False))
    return files
