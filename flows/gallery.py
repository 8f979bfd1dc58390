"""``DEST/index.html``: a gallery of every item in the output, with an interactive 3D viewer per mesh.

What is written, all of it published atomically (staged, then :meth:`Storage.publish`):

- ``DEST/index.html``: the page. Cards are data (one JSON document in the page) rendered by
  ``_gallery/gallery.js`` a screenful at a time, so thousands of items stay light.
- ``DEST/_gallery/``: the viewer (three.js r187 + GLTFLoader + OrbitControls as one classic script,
  vendored in ``flows/gallery_assets/``), the gallery script and its style sheet, and ``cards.json``,
  a cache of what each item's metadata says (keyed by the metadata file's size and mtime/etag), so a
  gallery over a large output re-reads only the metadata that changed.
- ``DEST/<id>/preview.png``: a 256 px thumbnail rendered on the CPU ("Previews", below).
- ``DEST/<id>/mesh.js``: the GLB as base64 in a classic script (``hy3dMeshes[id] = "..."``).
  Chromium lets a page opened from disk load ``<script src>`` from the disk, but refuses it
  ``fetch``/XHR and ES modules; so the viewer injects this script when the card scrolls into view
  and parses the bytes with ``GLTFLoader.parse``, with no request at all. Served over HTTP(S) the
  viewer fetches ``mesh.glb`` itself and uses the sidecar only as a fallback. Meshes larger than
  :data:`MAX_SIDECAR_BYTES` get no sidecar (their card links the GLB and shows the thumbnail when
  opened from disk).
- ``DEST/<id>/source.jpg``: a 256 px JPEG of a stored source image (the original may live on
  another storage); sources given as URLs are linked as they are.

Nothing here may fail an item or a run: :func:`write_preview` logs and returns None,
:func:`publish_gallery` logs and returns None.

Sections: previews (the CPU renderer), then the gallery. This module brings numpy and trimesh:
the flow imports it with the first preview, not before its first submit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import fsspec
from PIL import Image
from prefect.artifacts import acreate_markdown_artifact

from flows.progress import MESH_FILE, METADATA_FILE, RUNS_FOLDER, ItemOutcome, ItemStatus, RunSummary
from tasks.errors import PreviewError, PreviewTooLargeError
from tasks.fetch import FULL_PARSE_MAX_BYTES, FULL_PARSE_SLOTS
from tasks.storage import STATE_FOLDER, Storage, modified_at, storage_error_message, utc_now

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]
    IntArray = npt.NDArray[np.int64]

# ==== Previews ====================================================================================
#
# A thumbnail of a GLB mesh, rendered on the CPU: no OpenGL, no display, only numpy and Pillow.
#
# :func:`render_preview` is a small software rasterizer, vectorized with numpy: every triangle of the
# scene (node transforms applied) is projected orthographically from a fixed three-quarter view (the
# direction the gallery's 3D viewer opens with) and fitted to the frame; triangles are scan-converted
# row by row into a z-buffer at twice the output size; the visible fragments are shaded with Lambert
# lighting (a key light, a fill from the camera, a sky term; two-sided, so open or inconsistently
# wound meshes render too; smooth within a crease angle, flat across sharper edges) and coloured by
# the base-colour texture (sampled per pixel through the interpolated UVs) times its factor, the
# vertex or face colours, or the material colour; then downsampled to ``size`` × ``size``
# (antialiasing). The background is transparent.
#
# It is pure (a path in, PNG bytes out); its cost per mesh is in docs/performance.md ("Previews").
# numpy and trimesh are imported by the functions that use them: a run whose meshes are all too
# big for a preview never loads them (about 30 MB, measured by the `memory` preset).

# Viewing direction, shared with the gallery's viewer (flows/gallery_assets/gallery.js): from the
# front (+Z, glTF's "forward"), turned to the right and looking slightly down.
VIEW_AZIMUTH_DEG = 35.0
VIEW_ELEVATION_DEG = 20.0
SUPERSAMPLE = 2
MARGIN = 0.06  # of the image, on each side
MAX_TEXTURE_PX = 1024  # textures are sampled per pixel; bigger ones are downscaled first
CLAY = (0.72, 0.70, 0.66)  # the colour of a mesh without any colour information (linear-ish sRGB)
CREASE_COS = math.cos(math.radians(40.0))  # sharper edges are shaded flat
# A preview loads the whole file, like a full parse, and costs about as much memory again as the
# mesh: bigger meshes get none (fifty 100 MB meshes landing at once would not fit).
PREVIEW_MAX_BYTES = FULL_PARSE_MAX_BYTES
# Fragments per rasterizer batch (bounds memory: ~10 float32/int arrays of this length).
BATCH_FRAGMENTS = 1 << 20

# The key light, in camera space (x right, y up, z towards the viewer): from the upper left, in front.
_LIGHT = (-0.45, 0.65, 0.62)


@dataclass
class _Part:
    """One mesh of the scene, in world coordinates, with what colours it."""

    vertices: FloatArray  # (n, 3)
    faces: IntArray  # (m, 3)
    normals: FloatArray  # (n, 3) per-vertex, world space
    factor: FloatArray  # (4,) base colour factor, sRGB 0..1
    uv: FloatArray | None = None  # (n, 2)
    texture: npt.NDArray[np.uint8] | None = None  # (h, w, 4)
    vertex_colors: FloatArray | None = None  # (n, 4) sRGB 0..1
    face_colors: FloatArray | None = None  # (m, 4) sRGB 0..1


def render_preview(glb_path: str, size: int = 256) -> bytes:
    """A ``size`` × ``size`` RGBA PNG of the GLB at ``glb_path``, transparent background.

    Raises :class:`PreviewTooLargeError` for a file over :data:`PREVIEW_MAX_BYTES`,
    :class:`PreviewError` when the file has no triangles, and whatever trimesh raises for a file it
    cannot read. Renders share the full-parse slots of :mod:`tasks.fetch` (memory is bounded by
    the slots, not by how many items land at once)."""
    import trimesh

    if size < 8:
        raise ValueError(f"preview size {size} is too small")
    file_bytes = os.path.getsize(glb_path)
    if file_bytes > PREVIEW_MAX_BYTES:
        raise PreviewTooLargeError(
            f"the mesh is {file_bytes / 2**20:.0f} MiB; previews are drawn up to "
            f"{PREVIEW_MAX_BYTES / 2**20:.0f} MiB"
        )
    with FULL_PARSE_SLOTS:
        scene = trimesh.load(glb_path, file_type="glb", force="scene")
        parts = _scene_parts(scene)
        del scene
        if not parts:
            raise PreviewError("the mesh has no triangles to draw")
        image = _render(parts, size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


# -- scene → parts ----------------------------------------------------------------------------


def _scene_parts(scene: Any) -> list[_Part]:
    import numpy as np
    import trimesh

    parts: list[_Part] = []
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry.get(geometry_name)
        faces = getattr(geometry, "faces", None)
        if not isinstance(geometry, trimesh.Trimesh) or faces is None or len(faces) == 0:
            continue
        matrix = np.asarray(transform, dtype=np.float64)
        vertices = np.asarray(geometry.vertices, dtype=np.float64)
        world = vertices @ matrix[:3, :3].T + matrix[:3, 3]
        normal_matrix = (
            np.linalg.inv(matrix[:3, :3]).T if abs(np.linalg.det(matrix[:3, :3])) > 1e-12 else None
        )
        normals = _vertex_normals(vertices, np.asarray(faces, dtype=np.int64))
        if normal_matrix is not None:
            normals = normals @ normal_matrix.T
        lengths = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = normals / np.where(lengths > 0, lengths, 1.0)
        part = _Part(
            vertices=world.astype(np.float32),
            faces=np.asarray(faces, dtype=np.int64),
            normals=normals.astype(np.float32),
            factor=np.array([*CLAY, 1.0], dtype=np.float32),
        )
        _colour_source(geometry.visual, part)
        parts.append(part)
    return parts


def _vertex_normals(vertices: npt.NDArray[np.float64], faces: IntArray) -> npt.NDArray[np.float64]:
    """Area-weighted vertex normals (trimesh's own need scipy for speed, which is not a dependency)."""
    import numpy as np

    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for axis in range(3):
        weights = np.repeat(face_normals[:, axis], 3)
        normals[:, axis] = np.bincount(faces.reshape(-1), weights=weights, minlength=len(vertices))
    return normals


def _colour_source(visual: Any, part: _Part) -> None:
    """Fill the part's colour fields from a trimesh visual (texture, vertex/face colours, material)."""
    import numpy as np

    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = getattr(visual, "material", None)
        factor = getattr(material, "baseColorFactor", None)
        if factor is None:
            factor = getattr(material, "diffuse", None)
        if factor is not None:
            part.factor = _unit_rgba(np.asarray(factor).reshape(-1)[:4])
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        uv = getattr(visual, "uv", None)
        if isinstance(image, Image.Image) and uv is not None and len(uv) == len(part.vertices):
            texture = image.convert("RGBA")
            if max(texture.size) > MAX_TEXTURE_PX:
                texture.thumbnail((MAX_TEXTURE_PX, MAX_TEXTURE_PX))
            part.texture = np.asarray(texture, dtype=np.uint8)
            part.uv = np.asarray(uv, dtype=np.float32)
    elif kind == "vertex":
        colors = np.asarray(visual.vertex_colors)
        if len(colors) == len(part.vertices):
            part.vertex_colors = _unit_rgba(colors)
    elif kind == "face":
        colors = np.asarray(visual.face_colors)
        if len(colors) == len(part.faces):
            part.face_colors = _unit_rgba(colors)
    else:
        material = getattr(visual, "material", None)
        factor = getattr(material, "baseColorFactor", None) if material is not None else None
        if factor is not None:
            part.factor = _unit_rgba(np.asarray(factor).reshape(-1)[:4])


def _unit_rgba(values: npt.NDArray[Any]) -> FloatArray:
    """Colours as float RGBA in 0..1, whether given as uint8 or as floats."""
    import numpy as np

    array = np.asarray(values)
    scaled = array.astype(np.float32) / 255.0 if array.dtype.kind in "ui" else array.astype(np.float32)
    if scaled.shape[-1] == 3:
        scaled = np.concatenate([scaled, np.ones((*scaled.shape[:-1], 1), np.float32)], axis=-1)
    return np.clip(scaled, 0.0, 1.0)


# -- camera, rasterizer, shading ------------------------------------------------------------


def _camera_basis() -> FloatArray:
    """Rows: right, up, towards-the-camera (camera space = world @ basis.T)."""
    import numpy as np

    azimuth, elevation = math.radians(VIEW_AZIMUTH_DEG), math.radians(VIEW_ELEVATION_DEG)
    back = np.array(
        [
            math.sin(azimuth) * math.cos(elevation),
            math.sin(elevation),
            math.cos(azimuth) * math.cos(elevation),
        ]
    )
    right = np.cross(np.array([0.0, 1.0, 0.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back]).astype(np.float32)


def _render(parts: list[_Part], size: int) -> Image.Image:
    import numpy as np

    side = size * SUPERSAMPLE
    basis = _camera_basis()
    offsets = np.cumsum([0] + [len(part.vertices) for part in parts])
    camera = np.concatenate([part.vertices for part in parts]) @ basis.T
    faces = np.concatenate([part.faces + offset for part, offset in zip(parts, offsets[:-1], strict=True)])
    face_part = np.concatenate([np.full(len(part.faces), i, np.int32) for i, part in enumerate(parts)])

    used = camera[np.unique(faces)]
    low, high = used[:, :2].min(axis=0), used[:, :2].max(axis=0)
    extent = float(max(high[0] - low[0], high[1] - low[1]))
    scale = side * (1.0 - 2 * MARGIN) / extent if extent > 0 else 1.0
    centre = (low + high) / 2.0
    screen = np.empty((len(camera), 3), np.float32)
    screen[:, 0] = (camera[:, 0] - centre[0]) * scale + side / 2.0
    screen[:, 1] = side / 2.0 - (camera[:, 1] - centre[1]) * scale
    screen[:, 2] = camera[:, 2]

    pixel, face, bary = _rasterize(screen, faces, side)
    rgba = np.zeros((side * side, 4), np.float32)
    if len(pixel):
        rgba[pixel] = _shade(parts, basis, camera, faces, face_part, offsets, face, bary)
    image = Image.fromarray((rgba.reshape(side, side, 4) * 255.0 + 0.5).astype(np.uint8), "RGBA")
    # Premultiplied while resampling, so that the transparent background does not darken the edges.
    return image.convert("RGBa").resize((size, size), Image.Resampling.BOX).convert("RGBA")


@dataclass
class _Triangles:
    """The scan-conversion set-up of every triangle (m of them), in screen space."""

    xs: FloatArray  # (m, 3) vertex x
    ys: FloatArray  # (m, 3) vertex y
    area: FloatArray  # (m,) twice the signed area
    row0: IntArray  # (m,) first pixel row crossed
    rows: IntArray  # (m,) pixel rows crossed (0 for a degenerate triangle)
    width: IntArray  # (m,) bounding-box width in pixels
    origin: npt.NDArray[np.float64]  # (m, 3) the first vertex, where the depth plane is anchored
    slope_x: npt.NDArray[np.float64]  # (m,) depth change per pixel to the right
    slope_y: npt.NDArray[np.float64]  # (m,) depth change per pixel down


def _rasterize(screen: FloatArray, faces: IntArray, side: int) -> tuple[IntArray, IntArray, FloatArray]:
    """The visible fragment of every covered pixel: (pixel index, face index, barycentrics (k, 3)).

    Scanline conversion, vectorized: each triangle is cut into the pixel rows its interior crosses,
    each row into the pixel centres between its left and right edges, so only covered pixels are
    ever generated; a z-buffer (``np.maximum.at``) keeps the nearest fragment of each pixel."""
    import numpy as np

    tris = _triangles(screen, faces, side)
    depth_buffer = np.full(side * side, -np.inf, np.float64)
    kept: list[tuple[IntArray, IntArray, npt.NDArray[np.float64]]] = []
    for ids in _batches(tris):
        fragments = _fragments(tris, ids, side)
        if fragments is not None:
            np.maximum.at(depth_buffer, fragments[0], fragments[2])
            kept.append(fragments)
    if not kept:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 3), np.float32)
    pixel = np.concatenate([k[0] for k in kept])
    face = np.concatenate([k[1] for k in kept])
    depth = np.concatenate([k[2] for k in kept])
    front = np.flatnonzero(depth >= depth_buffer[pixel])
    # Ties (shared edges at equal depth): keep one fragment per pixel.
    pixel, first_index = np.unique(pixel[front], return_index=True)
    face = face[front[first_index]]
    bary = _barycentrics(tris.xs[face], tris.ys[face], tris.area[face], pixel % side, pixel // side)
    return pixel, face, bary


def _triangles(screen: FloatArray, faces: IntArray, side: int) -> _Triangles:
    import numpy as np

    tri = screen[faces]  # (m, 3, 3)
    xs, ys = tri[:, :, 0], tri[:, :, 1]
    area = (xs[:, 1] - xs[:, 0]) * (ys[:, 2] - ys[:, 0]) - (xs[:, 2] - xs[:, 0]) * (ys[:, 1] - ys[:, 0])
    # Rows whose pixel centre (+0.5) lies within the triangle's vertical extent.
    row0 = np.clip(np.ceil(ys.min(axis=1) - 0.5), 0, side).astype(np.int64)
    row1 = np.clip(np.floor(ys.max(axis=1) - 0.5), -1, side - 1).astype(np.int64)
    rows = np.where(np.abs(area) > 1e-9, np.maximum(row1 - row0 + 1, 0), 0)
    width = np.clip(np.ceil(xs.max(axis=1)) - np.floor(xs.min(axis=1)), 1, side).astype(np.int64)
    # Depth as a plane over the screen, per triangle, relative to its first vertex (in float64:
    # nearly edge-on triangles have huge slopes, an absolute intercept would lose the depth).
    origin = tri[:, 0, :].astype(np.float64)
    e1 = tri[:, 1, :].astype(np.float64) - origin
    e2 = tri[:, 2, :].astype(np.float64) - origin
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    det = np.where(np.abs(det) > 1e-9, det, 1.0)
    slope_x = (e1[:, 2] * e2[:, 1] - e2[:, 2] * e1[:, 1]) / det
    slope_y = (e1[:, 0] * e2[:, 2] - e2[:, 0] * e1[:, 2]) / det
    return _Triangles(xs, ys, area, row0, rows, width, origin, slope_x, slope_y)


def _batches(tris: _Triangles) -> Iterator[IntArray]:
    """The ids of the triangles that cross a pixel row, in consecutive batches whose bounding boxes
    hold about BATCH_FRAGMENTS pixels: bounded memory."""
    import numpy as np

    budget = np.cumsum(tris.rows * tris.width)
    total = int(budget[-1]) if len(budget) else 0
    cuts = np.searchsorted(budget, np.arange(BATCH_FRAGMENTS, total, BATCH_FRAGMENTS), side="right")
    edges = np.unique(np.concatenate([[0], cuts, [len(tris.rows)]]))
    for start, stop in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        ids = np.arange(start, stop)
        ids = ids[tris.rows[ids] > 0]
        if len(ids):
            yield ids


def _row_spans(tris: _Triangles, ids: IntArray, side: int) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """One entry per (triangle, pixel row) of the triangles ``ids``: the triangle, the row, the
    first pixel column covered and how many are."""
    import numpy as np

    row_tri = np.repeat(ids, tris.rows[ids])
    first = np.cumsum(tris.rows[ids]) - tris.rows[ids]
    row_y = tris.row0[row_tri] + (np.arange(len(row_tri)) - np.repeat(first, tris.rows[ids]))
    centre_y = row_y.astype(np.float32) + 0.5
    left = np.full(len(row_tri), np.inf, np.float32)
    right = np.full(len(row_tri), -np.inf, np.float32)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        xa, ya = tris.xs[row_tri, a], tris.ys[row_tri, a]
        xb, yb = tris.xs[row_tri, b], tris.ys[row_tri, b]
        low, high = np.minimum(ya, yb), np.maximum(ya, yb)
        crosses = (centre_y >= low) & (centre_y <= high) & (high > low)
        t = np.where(crosses, (centre_y - ya) / np.where(high > low, yb - ya, 1.0), 0.0)
        x = xa + t * (xb - xa)
        left = np.where(crosses, np.minimum(left, x), left)
        right = np.where(crosses, np.maximum(right, x), right)
    col0 = np.clip(np.ceil(left - 0.5), 0, side).astype(np.int64)
    col1 = np.clip(np.floor(right - 0.5), -1, side - 1).astype(np.int64)
    return row_tri, row_y, col0, np.maximum(col1 - col0 + 1, 0)


def _fragments(
    tris: _Triangles, ids: IntArray, side: int
) -> tuple[IntArray, IntArray, npt.NDArray[np.float64]] | None:
    """One entry per pixel covered by the triangles ``ids``: (pixel index, face index, depth); None
    when they cover no pixel centre."""
    import numpy as np

    row_tri, row_y, col0, count = _row_spans(tris, ids, side)
    frag_row = np.repeat(np.arange(len(row_tri)), count)
    if not len(frag_row):
        return None
    starts = np.cumsum(count) - count
    col = col0[frag_row] + (np.arange(len(frag_row)) - starts[frag_row])
    face = row_tri[frag_row]
    pix = row_y[frag_row] * side + col
    at = tris.origin[face]
    z = (
        at[:, 2]
        + tris.slope_x[face] * (col + 0.5 - at[:, 0])
        + tris.slope_y[face] * (row_y[frag_row] + 0.5 - at[:, 1])
    )
    return pix, face, z


def _barycentrics(
    xs: FloatArray, ys: FloatArray, area: FloatArray, col: IntArray, row: IntArray
) -> FloatArray:
    """Barycentric weights (k, 3) of the pixel centres (col, row) in the triangles (xs, ys: (k, 3))."""
    import numpy as np

    cx, cy = col.astype(np.float32) + 0.5, row.astype(np.float32) + 0.5
    b0 = ((xs[:, 1] - cx) * (ys[:, 2] - cy) - (xs[:, 2] - cx) * (ys[:, 1] - cy)) / area
    b1 = ((xs[:, 2] - cx) * (ys[:, 0] - cy) - (xs[:, 0] - cx) * (ys[:, 2] - cy)) / area
    weights = np.clip(np.stack([b0, b1, 1.0 - b0 - b1], axis=1), 0.0, 1.0)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-8)
    result: FloatArray = weights.astype(np.float32)
    return result


def _shade(
    parts: list[_Part],
    basis: FloatArray,
    camera: FloatArray,
    faces: IntArray,
    face_part: npt.NDArray[np.int32],
    offsets: npt.NDArray[np.int64],
    face: IntArray,
    bary: FloatArray,
) -> FloatArray:
    """Lit RGBA (sRGB, 0..1, opaque) for each visible fragment."""
    import numpy as np

    corners = faces[face]  # (k, 3) global vertex ids
    # Smooth shading within a crease angle, flat across sharper edges (a cube stays a cube even
    # when its corners share vertices), as "auto smooth" does.
    points = camera[corners]
    flat = np.cross(points[:, 1] - points[:, 0], points[:, 2] - points[:, 0])
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    smooth = (np.concatenate([part.normals for part in parts]) @ basis.T)[corners]  # (k, 3, 3)
    keep = np.einsum("kcd,kd->kc", smooth, flat) > CREASE_COS
    smooth = np.where(keep[:, :, None], smooth, flat[:, None, :])
    normal = smooth[:, 0] * bary[:, 0:1] + smooth[:, 1] * bary[:, 1:2] + smooth[:, 2] * bary[:, 2:3]
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-8)
    normal *= np.where(flat[:, 2:3] < 0, -1.0, 1.0).astype(np.float32)  # two-sided: the side seen

    albedo = np.empty((len(face), 3), np.float32)
    owner = face_part[face]
    for index, part in enumerate(parts):
        mine = np.flatnonzero(owner == index)
        if len(mine):
            local = corners[mine] - offsets[index]
            albedo[mine] = _albedo(part, local, face[mine] - _face_offset(parts, index), bary[mine])

    linear = albedo**2.2
    light = np.array(_LIGHT, dtype=np.float32)
    light /= np.linalg.norm(light)
    key = np.clip(normal @ light, 0.0, None)
    fill = np.clip(normal[:, 2], 0.0, None)
    sky = 0.5 + 0.5 * normal[:, 1]
    light = 0.25 + 0.15 * sky + 1.05 * key + 0.35 * fill
    colour = np.clip(linear * light[:, None], 0.0, 1.0) ** (1 / 2.2)
    return np.concatenate([colour, np.ones((len(face), 1), np.float32)], axis=1)


def _face_offset(parts: list[_Part], index: int) -> int:
    return sum(len(part.faces) for part in parts[:index])


def _interpolate(values: FloatArray, corners: IntArray, bary: FloatArray) -> FloatArray:
    """Per-vertex ``values`` (n, c) at the fragments: corners (k, 3), barycentric weights (k, 3)."""
    result: FloatArray = (
        values[corners[:, 0]] * bary[:, 0:1]
        + values[corners[:, 1]] * bary[:, 1:2]
        + values[corners[:, 2]] * bary[:, 2:3]
    )
    return result


def _albedo(part: _Part, corners: IntArray, faces: IntArray, bary: FloatArray) -> FloatArray:
    """Base colour (sRGB, 0..1) of fragments of one part: texture × factor, vertex/face colours, or factor."""
    import numpy as np

    factor = part.factor[:3]
    if part.texture is not None and part.uv is not None:
        uv = _interpolate(part.uv, corners, bary)
        uv -= np.floor(uv)  # glTF's default sampler repeats
        height, width = part.texture.shape[:2]
        col = np.clip((uv[:, 0] * width).astype(np.int64), 0, width - 1)
        row = np.clip(((1.0 - uv[:, 1]) * height).astype(np.int64), 0, height - 1)
        texel = part.texture[row, col, :3].astype(np.float32) / 255.0
        result: FloatArray = texel * factor
        return result
    if part.vertex_colors is not None:
        colours = _interpolate(part.vertex_colors[:, :3], corners, bary)
        return colours
    if part.face_colors is not None:
        face_colours: FloatArray = part.face_colors[faces, :3]
        return face_colours
    return np.broadcast_to(factor, (len(corners), 3)).astype(np.float32)


# ==== The gallery =================================================================================

logger = logging.getLogger("hy3d.gallery")

GALLERY_FILE = "index.html"
ASSETS_FOLDER = "_gallery"
CACHE_FILE = "cards.json"
PREVIEW_FILE = "preview.png"
SIDECAR_FILE = "mesh.js"
WEB_SIDECAR_FILE = "mesh.web.js"  # the sidecar of mesh.web.glb (deliverable "web")
SOURCE_FILE = "source.jpg"
PREVIEW_PX = 256
SOURCE_PX = 256
# A bigger mesh gets no base64 sidecar (it would be 4/3 of the mesh again, parsed as one JS string).
MAX_SIDECAR_BYTES = 48 * 1024 * 1024
# Items whose preview/sidecar/source.jpg are missing (meshes landed before the gallery existed) are
# completed by build_gallery, at most this many per call; later calls do the rest.
MAX_BACKFILL = 200
MAX_ATTEMPTS = 3  # a mesh whose preview failed this many times is left alone until it changes
WORKERS = 4
ASSETS_DIR = Path(__file__).resolve().parent / "gallery_assets"
# Published under DEST/_gallery/ by name; third-party code is kept apart, in vendor/.
ASSET_FILES = {
    "three-viewer.min.js": ASSETS_DIR / "vendor" / "three-viewer.min.js",
    "gallery.js": ASSETS_DIR / "gallery.js",
    "gallery.css": ASSETS_DIR / "gallery.css",
}
CACHE_SCHEMA = "prefect-hunyuan3d/gallery-cache/v1"


@dataclass(frozen=True)
class Gallery:
    """What :func:`build_gallery` wrote."""

    url: str  # the page (a file:// URI for a local output)
    items: int
    landed: int
    not_landed: int
    backfilled: int = 0
    backfill_left: int = 0


# -- writing files atomically ---------------------------------------------------------------


@contextlib.contextmanager
def _staged(storage: Storage, *parts: str) -> Iterator[str]:
    """A local path to fill, published at ``parts`` when the block exits without error.

    Local outputs stage next to the destination (publishing is an atomic rename). For object
    stores the staged file carries the final file name, because s3fs and gcsfs pick the object's
    Content-Type from it: ``index.html`` must be served as text/html to open in a browser."""
    if storage.is_local:
        staged = storage.staging_file(*parts)
        try:
            yield staged
            storage.publish(staged, *parts)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        return
    folder = tempfile.mkdtemp(prefix="hy3d-gallery-")
    try:
        staged = os.path.join(folder, parts[-1])
        yield staged
        storage.publish(staged, *parts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_bytes(storage: Storage, data: bytes, *parts: str) -> None:
    with _staged(storage, *parts) as staged, open(staged, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def _local_copy(storage: Storage, *parts: str) -> Iterator[str]:
    """A local path holding the file at ``parts``: the file itself on a local output, else a download."""
    if storage.is_local:
        yield storage.path(*parts)
        return
    handle, path = tempfile.mkstemp(prefix="hy3d-", suffix=f"-{parts[-1]}")
    os.close(handle)
    try:
        storage.fs.get_file(storage.path(*parts), path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# -- per-item assets --------------------------------------------------------------------------


def write_preview(storage: Storage, item_id: str) -> str | None:
    """Render ``DEST/<id>/preview.png`` from the published mesh, and write the viewer's
    ``mesh.js`` sidecar and the ``source.jpg`` rendition next to it.

    Returns the preview's URL, or None when it could not be made; never raises (a thumbnail must
    never fail the item: problems are logged as warnings)."""
    try:
        return _write_item_assets(storage, item_id, storage.read_json(item_id, METADATA_FILE))
    except Exception as exc:
        logger.warning("%s: could not write the preview: %s: %s", item_id, type(exc).__name__, exc)
        return None


def _write_item_assets(storage: Storage, item_id: str, metadata: Any) -> str | None:
    preview_url: str | None = None
    mesh_bytes = storage.size(item_id, MESH_FILE)
    if mesh_bytes is None:
        logger.warning("%s: no %s to preview", item_id, MESH_FILE)
    elif mesh_bytes > max(PREVIEW_MAX_BYTES, MAX_SIDECAR_BYTES):
        # Neither a preview nor a sidecar: not worth copying the mesh from an object store.
        _drop_sidecar(storage, item_id)
        logger.info("%s: no preview (the mesh is %d MiB)", item_id, mesh_bytes // 2**20)
    else:
        with _local_copy(storage, item_id, MESH_FILE) as mesh_path:
            try:
                _write_sidecar(storage, item_id, mesh_path)
            except Exception as exc:
                logger.warning(
                    "%s: could not write %s: %s: %s", item_id, SIDECAR_FILE, type(exc).__name__, exc
                )
            from tasks.errors import PreviewTooLargeError

            try:
                _write_bytes(storage, render_preview(mesh_path, PREVIEW_PX), item_id, PREVIEW_FILE)
                preview_url = storage.url(item_id, PREVIEW_FILE)
            except PreviewTooLargeError as exc:
                logger.info("%s: no preview: %s", item_id, exc)
            except Exception as exc:
                logger.warning("%s: could not render the preview: %s: %s", item_id, type(exc).__name__, exc)
    if isinstance(metadata, dict):
        write_source(storage, item_id, metadata)
    return preview_url


def _write_sidecar(storage: Storage, item_id: str, mesh_path: str, name: str = SIDECAR_FILE) -> bool:
    """``mesh.js``: the GLB as base64 assigned to ``window.hy3dMeshes[id]``, streamed (never the
    whole mesh in memory twice). A mesh over the limit gets none (and loses a stale one)."""
    if os.path.getsize(mesh_path) > MAX_SIDECAR_BYTES:
        _drop_sidecar(storage, item_id, name)
        return False
    key = json.dumps(item_id, ensure_ascii=True)
    with (
        _staged(storage, item_id, name) as staged,
        open(mesh_path, "rb") as source,
        open(staged, "wb") as out,
    ):
        out.write(f'(window.hy3dMeshes=window.hy3dMeshes||{{}})[{key}]="'.encode())
        while chunk := source.read(3 * 1024 * 1024):  # a multiple of 3: no padding mid-stream
            out.write(base64.b64encode(chunk))
        out.write(b'";\n')
    return True


def _drop_sidecar(storage: Storage, item_id: str, name: str = SIDECAR_FILE) -> None:
    """A stale sidecar would show an older mesh than the one published."""
    with contextlib.suppress(FileNotFoundError, OSError):
        storage.fs.rm_file(storage.path(item_id, name))


def write_web_sidecar(storage: Storage, item_id: str, web_glb_path: str) -> bool:
    """``mesh.web.js``: the web GLB's sidecar, so that the viewer shows the web GLB from file:// too
    (:mod:`flows.deliver` writes it with the web GLB). Never raises (logs instead)."""
    try:
        return _write_sidecar(storage, item_id, web_glb_path, WEB_SIDECAR_FILE)
    except Exception as exc:
        logger.warning("%s: could not write %s: %s: %s", item_id, WEB_SIDECAR_FILE, type(exc).__name__, exc)
        return False


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def write_source(storage: Storage, item_id: str, metadata: Mapping[str, Any]) -> bool:
    """``DEST/<id>/source.jpg``: a small JPEG of the item's stored source image (URL sources are
    linked instead). True when written; problems are logged, never raised."""
    source = (metadata.get("source") or {}).get("image")
    if not isinstance(source, str) or not source or _is_url(source):
        return False
    try:
        with fsspec.open(source, "rb", **storage.storage_options) as handle:
            data = handle.read(64 * 1024 * 1024)
        _write_bytes(storage, _jpeg_rendition(data, SOURCE_PX), item_id, SOURCE_FILE)
        return True
    except Exception as exc:
        logger.warning("%s: could not copy the source image: %s: %s", item_id, type(exc).__name__, exc)
        return False


def _jpeg_rendition(data: bytes, size: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (size, size))  # cheap JPEG downscale; a no-op for other formats
        image = opened.convert("RGBA")
    image.thumbnail((size, size))
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


# -- the gallery ------------------------------------------------------------------------------


def gallery_url(storage: Storage) -> str:
    """Where the gallery page is: a ``file://`` URI for a local output, else the storage URL."""
    if storage.is_local:
        return Path(storage.path(GALLERY_FILE)).resolve().as_uri()
    return storage.url(GALLERY_FILE)


@dataclass
class _Entry:
    """One id's files under DEST, from one listing."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.files

    def key(self, name: str) -> str | None:
        info = self.files.get(name)
        return None if info is None else _version(info)

    def stale(self, asset: str) -> bool:
        """Missing, or older than the mesh it was made from."""
        if asset not in self.files:
            return True
        made, mesh = modified_at(self.files[asset]), modified_at(self.files.get(MESH_FILE, {}))
        return made is not None and mesh is not None and made + 1e-3 < mesh


def build_gallery(storage: Storage, summary: RunSummary, *, max_backfill: int = MAX_BACKFILL) -> Gallery:
    """Write ``DEST/index.html`` and its assets over every item in the output (the ids that have
    a ``metadata.json``, plus this run's items that have none, such as rejected rows); returns what
    was written. Raises on storage errors (see :func:`publish_gallery` for the safe call)."""
    entries = _list_items(storage)
    cache = storage.read_json(ASSETS_FOLDER, CACHE_FILE)
    cached: dict[str, Any] = {}
    if isinstance(cache, dict) and cache.get("schema") == CACHE_SCHEMA:
        cached = cache.get("items") or {}

    with ThreadPoolExecutor(WORKERS) as pool:
        records = _read_records(storage, pool, entries, cached)
        jobs = _backfill_jobs(entries, records)
        backfill, left = jobs[:max_backfill], max(0, len(jobs) - max_backfill)
        if backfill:
            logger.info("gallery: writing previews/sidecars/sources for %d item(s)", len(backfill))
        _run_backfill(storage, pool, backfill, entries, records)
        if left:
            logger.info("gallery: %d item(s) still lack previews; the next gallery write continues", left)

    cards = [_with_files(item_id, records[item_id]["card"], entries[item_id]) for item_id in records]
    cards += _cards_without_metadata(summary, set(records))
    _apply_latest_run(cards, summary)
    cards.sort(key=lambda card: (str(card["id"]).lower(), str(card["id"])))

    versions = _write_assets(storage, cache if isinstance(cache, dict) else {})
    storage.write_json(
        {"schema": CACHE_SCHEMA, "written_at": utc_now(), "assets": versions, "items": records},
        ASSETS_FOLDER,
        CACHE_FILE,
    )
    page = render_index(cards, summary, storage, versions)
    _write_bytes(storage, page.encode("utf-8"), GALLERY_FILE)
    landed = sum(1 for card in cards if card["landed"])
    return Gallery(
        url=gallery_url(storage),
        items=len(cards),
        landed=landed,
        not_landed=len(cards) - landed,
        backfilled=len(backfill),
        backfill_left=left,
    )


# (item id, needs its preview and sidecar, needs its source.jpg)
_BackfillJob = tuple[str, bool, bool]


def _read_records(
    storage: Storage, pool: ThreadPoolExecutor, entries: Mapping[str, _Entry], cached: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The cache record of every id with a ``metadata.json``, keyed by id: the cached one while the
    metadata file is unchanged, else one made from the metadata read anew."""
    ids = sorted(item_id for item_id, entry in entries.items() if entry.has(METADATA_FILE))
    records: dict[str, dict[str, Any]] = {}
    to_read = []
    for item_id in ids:
        previous = cached.get(item_id)
        if isinstance(previous, dict) and previous.get("key") == entries[item_id].key(METADATA_FILE):
            records[item_id] = previous
        else:
            to_read.append(item_id)
    for item_id, metadata in zip(
        to_read, pool.map(lambda i: storage.read_json(i, METADATA_FILE), to_read), strict=True
    ):
        if isinstance(metadata, dict):
            records[item_id] = {
                "key": entries[item_id].key(METADATA_FILE),
                "card": _card_from_metadata(item_id, metadata),
                "source_checked": False,
                "assets_failed": None,  # {"mesh": key, "times": n}: tried n times in vain
            }
    return records


def _backfill_jobs(
    entries: Mapping[str, _Entry], records: Mapping[str, dict[str, Any]]
) -> list[_BackfillJob]:
    """The landed meshes that lack their per-item files (landed before the gallery existed, or
    write_preview was not called), leaving out previews that failed too often and sizes that get none."""
    jobs = []
    for item_id, record in records.items():
        entry, card = entries[item_id], record["card"]
        mesh_key = entry.key(MESH_FILE)
        needs_assets = (
            card["landed"]
            and entry.has(MESH_FILE)
            and _attempts(record, mesh_key) < MAX_ATTEMPTS
            and (
                (entry.stale(PREVIEW_FILE) and _size(entry, MESH_FILE) <= PREVIEW_MAX_BYTES)
                or (entry.stale(SIDECAR_FILE) and _size(entry, MESH_FILE) <= MAX_SIDECAR_BYTES)
            )
        )
        needs_source = (
            not entry.has(SOURCE_FILE)
            and not record.get("source_checked")
            and card.get("source_kind") == "stored"
        )
        if needs_assets or needs_source:
            jobs.append((item_id, needs_assets, needs_source))
    return jobs


def _run_backfill(
    storage: Storage,
    pool: ThreadPoolExecutor,
    jobs: list[_BackfillJob],
    entries: Mapping[str, _Entry],
    records: Mapping[str, dict[str, Any]],
) -> None:
    """Write the jobs' files; note in the records what failed or was checked, and in the entries
    what now exists."""
    for (item_id, needs_assets, needs_source), done in zip(
        jobs, pool.map(lambda job: _backfill(storage, job[0], job[1], job[2]), jobs), strict=True
    ):
        record, entry = records[item_id], entries[item_id]
        if needs_assets and not done.get(PREVIEW_FILE):
            mesh_key = entry.key(MESH_FILE)
            record["assets_failed"] = {"mesh": mesh_key, "times": _attempts(record, mesh_key) + 1}
        if needs_source:
            record["source_checked"] = True
        for name, made in done.items():
            if made:
                entry.files[name] = {"size": 1}


def _attempts(record: Mapping[str, Any], mesh_key: str | None) -> int:
    """How many gallery writes already failed to make this mesh's preview."""
    failed = record.get("assets_failed")
    if isinstance(failed, dict) and failed.get("mesh") == mesh_key:
        return int(failed.get("times") or 0)
    return 0


def _backfill(storage: Storage, item_id: str, needs_assets: bool, needs_source: bool) -> dict[str, bool]:
    made: dict[str, bool] = {}
    try:
        metadata = storage.read_json(item_id, METADATA_FILE)
        if needs_assets:
            made[PREVIEW_FILE] = _write_item_assets(storage, item_id, None) is not None
            made[SIDECAR_FILE] = storage.exists(item_id, SIDECAR_FILE)
        if needs_source and isinstance(metadata, dict):
            made[SOURCE_FILE] = write_source(storage, item_id, metadata)
    except Exception as exc:
        logger.warning("%s: gallery backfill failed: %s: %s", item_id, type(exc).__name__, exc)
    return made


def _list_items(storage: Storage) -> dict[str, _Entry]:
    """Every ``<id>/<file>`` under DEST in one listing (a flat, paginated listing on object stores)."""
    try:
        listing: dict[str, dict[str, Any]] = storage.fs.find(storage.root, detail=True)
    except FileNotFoundError:
        return {}
    root = storage.root.rstrip("/")
    stripped = storage.fs._strip_protocol(root).rstrip("/")
    entries: dict[str, _Entry] = {}
    for path, info in listing.items():
        name = str(path)
        for prefix in (root, stripped):
            if name.startswith(prefix + "/"):
                relative = name[len(prefix) + 1 :]
                break
        else:
            continue
        item_id, _, file_name = relative.partition("/")
        if not file_name or "/" in file_name or item_id.startswith(".") or item_id == STATE_FOLDER:
            continue
        entries.setdefault(item_id, _Entry()).files[file_name] = info
    return entries


def _version(info: Mapping[str, Any]) -> str:
    """Changes whenever the file does: size plus the backend's etag or modification time."""
    for name in (
        "ETag",
        "etag",
        "md5Hash",
        "generation",
        "mtime",
        "LastModified",
        "last_modified",
        "updated",
    ):
        if info.get(name) is not None:
            return f"{info.get('size')}:{info[name]}"
    return f"{info.get('size')}:{info.get('created')}"


def _size(entry: _Entry, name: str) -> int:
    size = entry.files.get(name, {}).get("size")
    return int(size) if isinstance(size, int | float) else 0


def _landed(status: Any) -> bool:
    try:
        return ItemStatus(status).landed
    except ValueError:
        return False


def _price(metadata: Mapping[str, Any]) -> str | None:
    """The price as shown, if the metadata records one: a number (USD) or {amount|price, currency}."""
    for value in (
        metadata.get("price_usd"),
        metadata.get("price"),
        metadata.get("cost"),
        (metadata.get("prediction") or {}).get("price"),
    ):
        amount, currency = value, "USD"
        if isinstance(value, dict):
            amount = value.get("amount", value.get("price", value.get("usd")))
            currency = str(value.get("currency") or "USD")
        if isinstance(amount, int | float) and not isinstance(amount, bool):
            text = f"{amount:.4f}".rstrip("0")
            text = text + "0" * max(0, 2 - len(text.partition(".")[2]))
            return f"${text}" if currency.upper() == "USD" else f"{text} {currency}"
        if isinstance(amount, str) and amount.strip():
            return amount.strip()
    return None


def _card_from_metadata(item_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a card shows, from ``metadata.json`` (files and URLs are added per listing)."""
    status = str(metadata.get("status") or "unknown")
    mesh = metadata.get("mesh") or {}
    timings = metadata.get("timings") or {}
    error = metadata.get("error") or {}
    prediction = metadata.get("prediction") or {}
    output = metadata.get("output") or {}
    image = metadata.get("image") or {}
    source = (metadata.get("source") or {}).get("image")
    source = source if isinstance(source, str) else None
    return {
        "id": item_id,
        "status": status,
        "landed": _landed(status),
        "faces": mesh.get("faces"),
        "vertices": mesh.get("vertices"),
        "seconds": timings.get("wall_seconds"),
        "finished": timings.get("finished_at"),
        "price": _price(metadata),
        "model": metadata.get("model"),
        "prediction": prediction.get("id"),
        "bytes": output.get("bytes"),
        "mesh_sha": (output.get("sha256") or "")[:12] or None,
        "image_sha": (image.get("sha256") or image.get("url_sha256") or "")[:12] or None,
        "error": error.get("message"),
        "error_code": error.get("code"),
        "warnings": [str(w) for w in metadata.get("warnings") or []][:5],
        "source": source,
        "source_kind": None if source is None else ("url" if _is_url(source) else "stored"),
        "deliverables": _deliverables(metadata.get("deliverables")),
    }


def _deliverables(records: Any) -> list[dict[str, Any]]:
    """What the card lists of ``metadata.json``'s ``deliverables``: format, file, bytes or error."""
    if not isinstance(records, dict):
        return []
    listed = []
    for fmt, record in records.items():
        if not isinstance(record, dict):
            continue
        path = record.get("path")
        listed.append(
            {
                "format": str(fmt),
                "path": path if isinstance(path, str) and "/" not in path else None,
                "bytes": record.get("bytes") if isinstance(record.get("bytes"), int) else None,
                "sha": (str(record.get("sha256") or ""))[:12] or None,
                "error": str(record["error"])[:300] if record.get("error") else None,
            }
        )
    return listed


def _cards_without_metadata(summary: RunSummary, known: set[str]) -> list[dict[str, Any]]:
    """This run's items that left no metadata (rejected rows, skipped or claimed items)."""
    cards = []
    for item in summary.items:
        if item.id in known:
            continue
        card = _card_from_outcome(item)
        card.update(preview=None, mesh=None, sidecar=None, metadata=None)
        card["source_img"] = item.source if _is_url(item.source) else None
        cards.append(card)
    return cards


def _card_from_outcome(item: ItemOutcome) -> dict[str, Any]:
    return {
        "id": item.id,
        "status": item.status.value,
        "landed": item.status.landed,
        "faces": item.faces,
        "vertices": None,
        "seconds": item.seconds,
        "finished": None,
        "price": None,
        "model": None,
        "prediction": item.prediction_id,
        "bytes": None,
        "mesh_sha": None,
        "image_sha": None,
        "error": item.error,
        "error_code": item.error_code,
        "warnings": [],
        "source": item.source or None,
        "source_kind": None if not item.source else ("url" if _is_url(item.source) else "stored"),
        "row": item.row,
    }


def _apply_latest_run(cards: list[dict[str, Any]], summary: RunSummary) -> None:
    """Say on a card when this run's attempt ended differently from what the output holds (e.g. a
    mesh landed earlier, this run's attempt failed; or another run is landing it)."""
    outcomes = {item.id: item for item in summary.items}
    for card in cards:
        outcome = outcomes.get(card["id"])
        card["this_run"] = outcome is not None
        if outcome is None or outcome.status.value == card["status"] or outcome.status.landed:
            continue
        detail = f": {outcome.error}" if outcome.error else ""
        card["note"] = f"latest run: {outcome.status.value}{detail}"


def _href(item_id: str, name: str, version: str | None = None) -> str:
    return f"{quote(item_id, safe='')}/{name}" + (f"?v={version}" if version else "")


def _with_files(item_id: str, card: dict[str, Any], entry: _Entry) -> dict[str, Any]:
    """The card plus relative links to the files that exist (versioned against stale caches)."""
    result = dict(card)
    mesh_version = card.get("mesh_sha") or entry.key(MESH_FILE)
    version = hashlib.sha256(str(mesh_version).encode()).hexdigest()[:12]
    has_mesh = entry.has(MESH_FILE)
    result["mesh"] = _href(item_id, MESH_FILE) if has_mesh else None
    result["sidecar"] = (
        _href(item_id, SIDECAR_FILE, version) if has_mesh and entry.has(SIDECAR_FILE) else None
    )
    result["preview"] = _href(item_id, PREVIEW_FILE, version) if entry.has(PREVIEW_FILE) else None
    result["metadata"] = _href(item_id, METADATA_FILE)
    if entry.has(SOURCE_FILE):
        result["source_img"] = _href(item_id, SOURCE_FILE, card.get("image_sha") or None)
    elif card.get("source_kind") == "url":
        result["source_img"] = card.get("source")
    else:
        result["source_img"] = None
    if card["landed"] and not has_mesh:
        result["note"] = f"{MESH_FILE} is missing from the output"
    deliverables = []
    for record in card.get("deliverables") or []:
        shown = dict(record)
        present = bool(record.get("path")) and entry.has(record["path"])
        shown["href"] = _href(item_id, record["path"], record.get("sha")) if present else None
        deliverables.append(shown)
        if record["format"] == "web" and present and has_mesh:
            result["web"] = shown["href"]
            if entry.has(WEB_SIDECAR_FILE):
                result["web_sidecar"] = _href(item_id, WEB_SIDECAR_FILE, record.get("sha"))
        if record["format"] == "usdz" and present:
            result["usdz"] = _href(item_id, record["path"])  # AR Quick Look: the plain file name
    result["deliverables"] = deliverables
    return result


def _write_assets(storage: Storage, previous_cache: Mapping[str, Any]) -> dict[str, str]:
    """Copy the viewer, script and style sheet to ``DEST/_gallery/`` unless the same are there."""
    assets = previous_cache.get("assets")
    published: Mapping[str, Any] = assets if isinstance(assets, dict) else {}
    versions: dict[str, str] = {}
    for name, source in ASSET_FILES.items():
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        versions[name] = digest
        if published.get(name) == digest and storage.size(ASSETS_FOLDER, name) == len(data):
            continue
        _write_bytes(storage, data, ASSETS_FOLDER, name)
    return versions


def _json_for_html(value: Any) -> str:
    """JSON safe inside a <script> element (no way to close it or open a comment)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_index(
    cards: list[dict[str, Any]], summary: RunSummary, storage: Storage, versions: Mapping[str, str]
) -> str:
    """The page: a header (counts, latest run), filters, and the cards as JSON for gallery.js."""
    landed = sum(1 for card in cards if card["landed"])
    runs_prefix = storage.url(RUNS_FOLDER) + "/"
    run_link = None
    if summary.summary_url and summary.summary_url.startswith(runs_prefix):
        run_link = f"{RUNS_FOLDER}/{quote(summary.summary_url[len(runs_prefix) :], safe='')}"
    page = {
        "output": storage.url(),
        "written_at": utc_now(),
        "latest_run": {
            "headline": summary.headline(),
            "finished_at": summary.finished_at,
            "summary": run_link,
            "stop_reason": summary.stop_reason,
        },
    }

    def asset(name: str) -> str:
        return f"{ASSETS_FOLDER}/{name}?v={versions.get(name, '')}"

    title = f"Hunyuan3D meshes — {storage.url()}"
    counts = f"{len(cards)} item(s): {landed} landed, {len(cards) - landed} did not land"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="prefect-hunyuan3d">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{asset("gallery.css")}">
</head>
<body>
<header class="top">
  <h1>Hunyuan3D meshes</h1>
  <p class="where"><code>{html.escape(storage.url())}</code></p>
  <p class="counts" id="counts">{html.escape(counts)}</p>
  <p class="run" id="run"></p>
  <div class="filters" role="toolbar" aria-label="Filter the items">
    <button type="button" data-filter="all" aria-pressed="true">All</button>
    <button type="button" data-filter="landed" aria-pressed="false">Landed</button>
    <button type="button" data-filter="failed" aria-pressed="false">Did not land</button>
    <input type="search" id="search" placeholder="Filter by id" aria-label="Filter by id">
  </div>
</header>
<main id="grid" class="grid" aria-live="polite"></main>
<div id="more" class="more"></div>
<noscript><p class="noscript">The gallery needs JavaScript. Each item's files are in its folder:
<code>&lt;id&gt;/mesh.glb</code>, <code>&lt;id&gt;/metadata.json</code>,
<code>&lt;id&gt;/preview.png</code>.</p></noscript>
<script type="application/json" id="hy3d-page">{_json_for_html(page)}</script>
<script type="application/json" id="hy3d-items">{_json_for_html(cards)}</script>
<script src="{asset("three-viewer.min.js")}"></script>
<script src="{asset("gallery.js")}"></script>
</body>
</html>
"""


# -- Prefect ----------------------------------------------------------------------------------


def gallery_markdown(gallery: Gallery, summary: RunSummary) -> str:
    """The ``hy3d-gallery`` artifact: where the gallery is and what it holds."""
    lines = [
        "# Hunyuan3D gallery",
        "",
        f"[Open the gallery]({gallery.url}) — {gallery.items} item(s) in the output: "
        f"{gallery.landed} landed, {gallery.not_landed} did not land.",
        "",
        f"`{gallery.url}`",
        "",
        f"This run: {summary.headline()}.",
    ]
    if gallery.url.startswith("file://"):
        lines += [
            "",
            "Browsers do not follow file:// links from a web page: paste the address into the address bar.",
        ]
    else:
        lines += [
            "",
            "Open it where the output is served over HTTP(S) (for example a bucket website or a "
            "presigned URL of index.html); every file it loads is relative to it.",
        ]
    if gallery.backfill_left:
        lines += ["", f"{gallery.backfill_left} older item(s) still lack a preview; the next run adds them."]
    return "\n".join(lines) + "\n"


async def publish_gallery(
    storage: Storage, summary: RunSummary, *, max_backfill: int = MAX_BACKFILL
) -> str | None:
    """Write the gallery (in a thread) and the ``hy3d-gallery`` markdown artifact. Returns the
    gallery's URL, or None when it could not be written; never raises (logged as a warning)."""
    try:
        gallery = await asyncio.to_thread(
            functools.partial(build_gallery, storage, summary, max_backfill=max_backfill)
        )
    except Exception as exc:
        clear = storage_error_message(exc, storage.root_url)
        logger.warning("could not write the gallery: %s", clear or f"{type(exc).__name__}: {exc}")
        return None
    try:
        await acreate_markdown_artifact(
            gallery_markdown(gallery, summary), key="hy3d-gallery", description=f"Gallery: {gallery.url}"
        )
    except Exception as exc:
        logger.warning("could not create the gallery artifact: %s", exc)
    return gallery.url
