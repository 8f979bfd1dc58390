"""``mesh.web.glb``: the mesh made light for a web page.

1. Textures: resized to at most ``texture_px`` and re-encoded as WebP by Pillow (``EXT_texture_webp``;
   every browser decodes WebP itself, so viewers need no decoder for it). gltfpack's npm build cannot
   encode textures (no WebP, no KTX2 without native BasisU), hence Pillow.
2. Geometry: gltfpack (meshoptimizer's glTF packer) simplifies to ``max_faces`` when the mesh has more
   (meshoptimizer's attribute-aware simplifier, keeping UV seams), quantizes (``KHR_mesh_quantization``)
   and compresses (``EXT_meshopt_compression``, ``-cc``). three.js, Babylon.js and <model-viewer> decode
   it with meshoptimizer's small decoder (bundled with the gallery's viewer).
"""

from __future__ import annotations

import os

from tasks.deliverables.gltf import textures_to_webp
from tasks.deliverables.tools import run_gltfpack
from tasks.errors import WebGlbError
from tasks.fetch import check_glb_header, inspect_glb_structure

# gltfpack's simplifier stops at 1% deviation by default; asked for a face budget, it may go further.
SIMPLIFY_ERROR = 0.05


def simplify_ratio(faces: int, max_faces: int | None) -> float | None:
    if max_faces is None or faces <= max_faces:
        return None
    return max(0.0001, max_faces / faces)


def build_web_glb(source: str, folder: str, *, texture_px: int, max_faces: int | None) -> str:
    """Write ``folder/mesh.web.glb`` from the GLB at ``source``; return its path."""
    stats = inspect_glb_structure(source)
    with open(source, "rb") as handle:
        webp = textures_to_webp(handle.read(), texture_px)
    staged = os.path.join(folder, "textures-webp.glb")
    with open(staged, "wb") as handle:
        handle.write(webp)
    del webp
    target = os.path.join(folder, "mesh.web.glb")
    arguments = ["-i", staged, "-o", target, "-cc"]
    ratio = simplify_ratio(stats.faces, max_faces)
    if ratio is not None:
        arguments += ["-si", f"{ratio:.6f}", "-se", str(SIMPLIFY_ERROR)]
    run_gltfpack(arguments)
    if ratio is not None and max_faces is not None and inspect_glb_structure(target).faces > max_faces:
        # Seams and borders held it back: simplify regardless of the error bound.
        run_gltfpack([*arguments, "-sa"])
    os.remove(staged)
    verify_web_glb(target, max_faces)
    return target


def verify_web_glb(path: str, max_faces: int | None) -> None:
    """Header and declared length, every buffer view inside the binary chunk, faces within budget."""
    check_glb_header(path)
    stats = inspect_glb_structure(path)
    if max_faces is not None and stats.faces > max_faces:
        raise WebGlbError(f"{stats.faces} faces after simplification, over max_faces {max_faces}")
