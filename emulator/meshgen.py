"""Deterministic stand-in for Hunyuan3D: meshes derived from the input image (or the prompt).

`image_to_glb` builds a closed relief: the front surface is a heightfield whose height is the pixel
brightness, cut to the silhouette (alpha channel when the image has transparency, else the pixels that
differ from the border colour); a shallower back surface and vertical side walls close it. The image
itself is embedded as the UV-mapped base-colour texture. Different images give different meshes
(vertex counts and bounds follow the silhouette and brightness); a blank image still gives a slab.

`prompt_to_glb` makes a seeded blob (a radially perturbed sphere) from the prompt's hash.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TEXTURE_PX = 256
_GRAIN = 6  # +- levels of an enlarged texture's grain
_WORK_MAX_PX = 512
_BORDER_DIFF = 0.12
_FRONT_BASE = 0.02
_FRONT_RELIEF = 0.25
_BACK_BASE = 0.02
_BACK_RELIEF = 0.08
_LUMA = np.array([0.299, 0.587, 0.114])


def image_to_glb(image_bytes: bytes, grid: int = 48, texture_px: int = TEXTURE_PX) -> bytes:
    """A textured relief mesh derived from `image_bytes` (any format Pillow reads), as GLB bytes.

    `grid` is the number of vertices along the longer image side (at least 2), `texture_px` the
    texture's longer side. Raises `PIL.UnidentifiedImageError` / `OSError` when the bytes are not a
    readable image.
    """
    return mesh_to_glb(image_mesh(image_bytes, grid, texture_px))


def prompt_to_glb(prompt: str, grid: int = 48) -> bytes:
    """A seeded, vertex-coloured blob derived from `prompt`, as GLB bytes."""
    return mesh_to_glb(prompt_mesh(prompt, grid))


def image_mesh(image_bytes: bytes, grid: int = 48, texture_px: int = TEXTURE_PX) -> trimesh.Trimesh:
    """The textured relief mesh of `image_bytes` (see `image_to_glb`)."""
    return relief_mesh(_load_rgba(image_bytes), grid, texture_px)


def _load_rgba(image_bytes: bytes) -> Image.Image:
    with Image.open(io.BytesIO(image_bytes)) as opened:
        opened.draft("RGB", (_WORK_MAX_PX, _WORK_MAX_PX))  # cheap JPEG downscale; no-op otherwise
        image = opened.convert("RGBA")
    image.thumbnail((_WORK_MAX_PX, _WORK_MAX_PX))
    return image


def _has_transparency(image: Image.Image) -> bool:
    extrema: Any = image.getchannel("A").getextrema()
    return bool(extrema[0] < 250)


def _silhouette(samples: FloatArray, use_alpha: bool) -> BoolArray:
    """Per-sample foreground mask: alpha when present, else difference from the border colour."""
    if use_alpha:
        mask: BoolArray = samples[..., 3] > 0.5
        return mask
    rgb = samples[..., :3]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(rgb - background).max(axis=-1) > _BORDER_DIFF
    return mask


def relief_mesh(image: Image.Image, grid: int = 48, texture_px: int = TEXTURE_PX) -> trimesh.Trimesh:
    """Build the closed, textured relief mesh for an RGBA image (see module docstring)."""
    grid = max(2, int(grid))
    width, height = image.size
    longest = max(width, height)
    cols = max(2, round(grid * width / longest))
    rows = max(2, round(grid * height / longest))

    samples = np.asarray(image.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    vertex_mask = _silhouette(samples, _has_transparency(image))
    corners = (
        vertex_mask[:-1, :-1].astype(np.int64)
        + vertex_mask[1:, :-1]
        + vertex_mask[:-1, 1:]
        + vertex_mask[1:, 1:]
    )
    cells: BoolArray = corners >= 2
    if not cells.any():  # blank image: keep the whole slab so there is always geometry
        cells = np.ones_like(cells)

    brightness = samples[..., :3] @ _LUMA
    scale = 1.0 / (max(cols, rows) - 1)
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    x = (jj - (cols - 1) / 2.0) * scale
    y = ((rows - 1) / 2.0 - ii) * scale
    front = np.stack([x, y, _FRONT_BASE + _FRONT_RELIEF * brightness], axis=-1).reshape(-1, 3)
    back = np.stack([x, y, -(_BACK_BASE + _BACK_RELIEF * brightness)], axis=-1).reshape(-1, 3)
    count = rows * cols
    vertices = np.concatenate([front, back])
    uv_single = np.stack([jj / (cols - 1), 1.0 - ii / (rows - 1)], axis=-1).reshape(-1, 2)
    uv = np.concatenate([uv_single, uv_single])

    ci, cj = np.nonzero(cells)
    v00 = ci * cols + cj
    v01 = v00 + 1
    v10 = v00 + cols
    v11 = v10 + 1
    front_faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    back_faces = front_faces[:, ::-1] + count
    side_faces = _side_walls(front_faces, count)
    faces = np.concatenate([front_faces, back_faces, side_faces]).astype(np.int64)

    used, remapped = np.unique(faces, return_inverse=True)
    faces = remapped.reshape(-1, 3)
    visual = trimesh.visual.TextureVisuals(uv=uv[used], image=_texture(image, texture_px))  # type: ignore[no-untyped-call]
    return trimesh.Trimesh(vertices=vertices[used], faces=faces, visual=visual, process=False)


def _texture(image: Image.Image, texture_px: int) -> Image.Image:
    """The image as the texture, its longer side `texture_px`: shrunk, or enlarged with a fine
    deterministic grain (a smooth enlargement would compress far better than a baked texture)."""
    texture = image.convert("RGB")
    if max(texture.size) >= texture_px:
        texture.thumbnail((texture_px, texture_px))
        return texture
    scale = texture_px / max(texture.size)
    size = (max(1, round(texture.width * scale)), max(1, round(texture.height * scale)))
    enlarged = np.asarray(texture.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(texture_px).integers(-_GRAIN, _GRAIN + 1, size=enlarged.shape[:2])
    return Image.fromarray(np.clip(enlarged + grain[..., None], 0, 255).astype(np.uint8))


def _side_walls(front_faces: IntArray, offset: int) -> IntArray:
    """Quads (two triangles each) joining every boundary edge of the front surface to the back."""
    directed = np.concatenate([front_faces[:, [0, 1]], front_faces[:, [1, 2]], front_faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _keys, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    boundary = directed[counts[inverse.reshape(-1)] == 1]
    a, b = boundary[:, 0], boundary[:, 1]
    first = np.stack([a, a + offset, b + offset], 1)
    second = np.stack([a, b + offset, b], 1)
    walls: IntArray = np.concatenate([first, second])
    return walls


def prompt_mesh(prompt: str, grid: int = 48) -> trimesh.Trimesh:
    """A seeded blob: a sphere with prompt-dependent axis scales and radial waves, vertex-coloured."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    segments = max(4, int(grid))
    sphere = trimesh.creation.uv_sphere(radius=1.0, count=[segments, segments])
    directions = np.asarray(sphere.vertices, dtype=np.float64)
    radius = np.ones(len(directions))
    for _ in range(3):
        frequency = rng.normal(size=3) * rng.uniform(1.0, 4.0)
        radius += rng.uniform(0.05, 0.2) * np.sin(directions @ frequency + rng.uniform(0, 2 * np.pi))
    vertices = directions * radius[:, None] * rng.uniform(0.5, 1.0, size=3) * 0.5
    low, high = rng.integers(0, 256, size=(2, 3))
    t = (vertices[:, 1] - vertices[:, 1].min()) / max(float(np.ptp(vertices[:, 1])), 1e-9)
    rgb = (low[None, :] * (1.0 - t[:, None]) + high[None, :] * t[:, None]).astype(np.uint8)
    colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)
    return trimesh.Trimesh(
        vertices=vertices, faces=np.asarray(sphere.faces), vertex_colors=colors, process=False
    )


def vertex_normals(vertices: FloatArray, faces: IntArray) -> FloatArray:
    """Area-weighted unit vertex normals (numpy only; a vertex without faces points along +z)."""
    first, second, third = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face_normals = np.cross(second - first, third - first)  # as long as twice the face's area: the weight
    # Each vertex sums the normals of the faces it is a corner of (all first corners, then all second, ...).
    corner_vertices = faces.T.ravel()
    summed = np.column_stack(
        [
            np.bincount(corner_vertices, weights=np.tile(face_normals[:, axis], 3), minlength=len(vertices))
            for axis in range(3)
        ]
    )
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    unit: FloatArray = np.where(length > 0, summed / np.where(length > 0, length, 1.0), [0.0, 0.0, 1.0])
    return unit


def mesh_to_glb(mesh: trimesh.Trimesh) -> bytes:
    """The mesh as GLB bytes, with vertex normals (as Hunyuan3D's meshes have)."""
    normals = vertex_normals(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, np.int64))
    mesh.vertex_normals = normals  # type: ignore[method-assign]
    data: Any = mesh.export(file_type="glb", include_normals=True)
    return bytes(data)
