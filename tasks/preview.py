"""A thumbnail of a GLB mesh, rendered on the CPU: no OpenGL, no display, only numpy and Pillow.

:func:`render_preview` is a small software rasterizer, vectorized with numpy: every triangle of the
scene (node transforms applied) is projected orthographically from a fixed three-quarter view (the
direction the gallery's 3D viewer opens with) and fitted to the frame; triangles are scan-converted
row by row into a z-buffer at twice the output size; the visible fragments are shaded with Lambert
lighting (a key light, a fill from the camera, a sky term; two-sided, so open or inconsistently
wound meshes render too; smooth within a crease angle, flat across sharper edges) and coloured by
the base-colour texture (sampled per pixel through the interpolated UVs) times its factor, the
vertex or face colours, or the material colour; then downsampled to ``size`` × ``size``
(antialiasing). The background is transparent.

It is pure (a path in, PNG bytes out); its cost per mesh is in docs/performance.md ("Previews").
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image

from tasks.errors import PreviewError, PreviewTooLargeError
from tasks.meshinfo import FULL_PARSE_MAX_BYTES, FULL_PARSE_SLOTS

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

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
_LIGHT = np.array([-0.45, 0.65, 0.62], dtype=np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)


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
    cannot read. Renders share the full-parse slots of :mod:`tasks.meshinfo` (memory is bounded by
    the slots, not by how many items land at once)."""
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
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for axis in range(3):
        weights = np.repeat(face_normals[:, axis], 3)
        normals[:, axis] = np.bincount(faces.reshape(-1), weights=weights, minlength=len(vertices))
    return normals


def _colour_source(visual: Any, part: _Part) -> None:
    """Fill the part's colour fields from a trimesh visual (texture, vertex/face colours, material)."""
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
    array = np.asarray(values)
    scaled = array.astype(np.float32) / 255.0 if array.dtype.kind in "ui" else array.astype(np.float32)
    if scaled.shape[-1] == 3:
        scaled = np.concatenate([scaled, np.ones((*scaled.shape[:-1], 1), np.float32)], axis=-1)
    return np.clip(scaled, 0.0, 1.0)


# -- camera, rasterizer, shading ------------------------------------------------------------


def _camera_basis() -> FloatArray:
    """Rows: right, up, towards-the-camera (camera space = world @ basis.T)."""
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
    key = np.clip(normal @ _LIGHT, 0.0, None)
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
