"""The output files of a prediction (CPU work: run it in a worker thread)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from emulator.glb import pad_glb
from emulator.meshgen import image_to_glb, prompt_to_glb

GLB_TYPE = "model/gltf-binary"
PNG_TYPE = "image/png"
_PREVIEW_PX = 256


@dataclass(frozen=True)
class OutputFile:
    extension: str
    content_type: str
    data: bytes


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


def render_outputs(
    image_bytes: bytes | None,
    prompt: str,
    grid: int,
    mesh_bytes_target: int | None,
    with_preview: bool,
) -> list[OutputFile]:
    """The mesh (from the image when given, else from the prompt), optionally padded, and for the
    v3-family models a preview image listed first, so that `outputs[0]` is not the mesh."""
    glb = image_to_glb(image_bytes, grid) if image_bytes is not None else prompt_to_glb(prompt, grid)
    if mesh_bytes_target:
        glb = pad_glb(glb, mesh_bytes_target)
    files = [OutputFile(".glb", GLB_TYPE, glb)]
    if with_preview:
        files.insert(0, OutputFile(".png", PNG_TYPE, _preview_png(image_bytes, prompt)))
    return files
