"""The ``fetch`` task: stream a prediction's outputs into storage, verify, publish all-or-nothing.

Outputs are downloaded to staging files first and told apart by content ("Output formats", below):
the best mesh among them becomes ``mesh.glb`` — as delivered when it is a GLB, converted when it is
an OBJ, a zip or another format trimesh reads, the original then kept as ``original.<ext>``.
Every other output (previews...) is stored next to it as ``output-N.<ext>``.

Sections: the task, then what it needs to tell what it got: output formats and GLB checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import posixpath
import struct
import threading
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.client import DownloadedFile, WaveSpeedClient, retry_async
from tasks.errors import DownloadError, IncompleteDownloadError, is_transient
from tasks.storage import Storage, discard


@dataclass(frozen=True)
class FetchedFile:
    url: str  # where it was published
    source_url: str
    size: int
    sha256: str
    kind: str | None = None  # what the content is (glb, obj, zip, png...), see "Output formats" below


@dataclass(frozen=True)
class FetchedMesh(FetchedFile):
    stats: MeshStats = field(default_factory=lambda: MeshStats(0, 0, None))
    extras: tuple[FetchedFile, ...] = ()
    original: FetchedFile | None = None  # the mesh as delivered, when it had to be converted


@dataclass(frozen=True)
class _Staged:
    file: DownloadedFile
    kind: str | None


def _sniff(downloaded: DownloadedFile) -> _Staged:
    with open(downloaded.path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    return _Staged(downloaded, kind_of(downloaded.url, downloaded.content_type, head))


async def _download(client: WaveSpeedClient, storage: Storage, url: str) -> _Staged:
    """One output into a staging file, retried on transient failures, and what it is."""

    async def attempt() -> _Staged:
        staged = await storage.small_io(storage.staging_file, "output")
        try:
            downloaded = await client.download(url, staged)
            return await asyncio.to_thread(_sniff, downloaded)
        except BaseException:
            await asyncio.to_thread(discard, staged)
            raise

    policy = client.retry_policy
    return await retry_async(attempt, on=is_transient, policy=policy, what=f"download {url[:80]}")


def file_digest(path: str) -> tuple[int, str]:
    """A local file's size and sha256 (hex)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return os.path.getsize(path), digest.hexdigest()


def _land_mesh(storage: Storage, staged: _Staged, item_id: str, mesh_name: str) -> FetchedMesh:
    """Verify (converting first when it is not a GLB) and publish; blocking, one worker-thread hop.
    The staged download is consumed either way."""
    source = staged.file
    if staged.kind == "glb":
        try:
            stats = inspect_glb(source.path)
        except BaseException:
            discard(source.path)
            raise
        storage.publish(source.path, item_id, mesh_name)
        return FetchedMesh(
            storage.url(item_id, mesh_name), source.url, source.size, source.sha256, "glb", stats
        )
    assert staged.kind is not None
    converted = storage.staging_file(mesh_name)
    try:
        from tasks.convert import convert_to_glb  # trimesh's OBJ reader: only for meshes not in GLB

        convert_to_glb(source.path, staged.kind, converted)
        stats = inspect_glb(converted)
        size, sha256 = file_digest(converted)
        original_name = f"original.{staged.kind}"
        storage.publish(source.path, item_id, original_name)  # first: mesh.glb means all is there
        storage.publish(converted, item_id, mesh_name)
    finally:
        discard(source.path)
        discard(converted)
    original = FetchedFile(
        storage.url(item_id, original_name), source.url, source.size, source.sha256, staged.kind
    )
    return FetchedMesh(
        storage.url(item_id, mesh_name), source.url, size, sha256, "glb", stats, original=original
    )


def choose_mesh(kinds: list[str | None]) -> int:
    """Index of the best mesh among outputs of these kinds (the first of the best format)."""
    candidates = [index for index, kind in enumerate(kinds) if is_mesh(kind)]
    if not candidates:
        found = ", ".join(kind or "unknown" for kind in kinds) or "none"
        raise DownloadError(f"none of the {len(kinds)} output(s) is a mesh (found: {found})")
    return min(candidates, key=lambda index: mesh_rank(kinds[index]))


async def fetch_outputs(
    client: WaveSpeedClient, outputs: list[str], storage: Storage, item_id: str, mesh_name: str
) -> FetchedMesh:
    """Download every output, choose the mesh by content, verify it (length, GLB header, trimesh
    parses it) and publish it at ``item_id/mesh_name``; a truncated or corrupt mesh is downloaded
    again, and the final path is only ever written with a verified file."""
    if not outputs:
        raise DownloadError("the prediction completed without outputs")
    staged: list[_Staged] = []
    try:
        for url in outputs:
            staged.append(await _download(client, storage, url))
        index = choose_mesh([entry.kind for entry in staged])
        first: _Staged | None = staged.pop(index)

        async def land() -> FetchedMesh:
            nonlocal first
            current, first = first, None
            if current is None:  # a retry: the last copy was corrupt
                current = await _download(client, storage, outputs[index])
            return await asyncio.to_thread(_land_mesh, storage, current, item_id, mesh_name)

        mesh = await retry_async(
            land, on=is_transient, policy=client.retry_policy, what=f"verify {item_id}/{mesh_name}"
        )
        extras = []
        for number, entry in enumerate(staged, start=1):
            name = f"output-{number}" + (f".{entry.kind}" if entry.kind else "")
            await asyncio.to_thread(storage.publish, entry.file.path, item_id, name)
            file = entry.file
            published = storage.url(item_id, name)
            extras.append(FetchedFile(published, file.url, file.size, file.sha256, entry.kind))
        return dataclasses.replace(mesh, extras=tuple(extras))
    finally:
        for entry in staged:
            await asyncio.to_thread(discard, entry.file.path)


@task(name="fetch", cache_policy=NO_CACHE, persist_result=False)
async def fetch(
    client: WaveSpeedClient, outputs: list[str], storage: Storage, item_id: str, mesh_name: str = "mesh.glb"
) -> FetchedMesh:
    """Download a completed prediction's outputs into ``storage`` under ``item_id/``."""
    return await fetch_outputs(client, outputs, storage, item_id, mesh_name)


# ==== Output formats ==============================================================================
#
# What kind of file an output is, told by its content rather than its name.
#
# Signed CDN URLs often have no extension (``.../o/<token>?X-Amz-Signature=...``) and are served as
# ``application/octet-stream``, and v3 models list a preview before the mesh, so the order of the
# outputs and their names say little. The kind is read from, in turn: the URL's extension, the
# ``Content-Type``, then the first bytes of the file. Pure functions: no I/O here.

# Mesh formats trimesh reads, best first: a GLB is kept as it is; the others are converted to one.
# A zip counts when it holds one of the others (an OBJ with its MTL and textures, typically).
MESH_KINDS = ("glb", "gltf", "obj", "zip", "stl", "ply", "off")
IMAGE_KINDS = ("png", "jpg", "webp", "gif")

_EXTENSIONS = {
    "jpeg": "jpg",
    "tif": "tiff",
    **{
        kind: kind
        for kind in (*MESH_KINDS, *IMAGE_KINDS, "usdz", "fbx", "mp4", "webm", "json", "txt", "mtl", "tiff")
    },
}

_CONTENT_TYPES = {
    "model/gltf-binary": "glb",
    "model/gltf+json": "gltf",
    "model/obj": "obj",
    "text/plain+obj": "obj",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "model/stl": "stl",
    "application/sla": "stl",
    "model/vnd.usdz+zip": "usdz",
    "model/3mf": "3mf",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
}

SNIFF_BYTES = 512  # how much of a file :func:`kind_of` needs


def extension_kind(url: str) -> str | None:
    """The kind named by the URL path's extension, if it names one we know."""
    extension = posixpath.splitext(urlsplit(url).path)[1].lower().lstrip(".")
    return _EXTENSIONS.get(extension)


def content_type_kind(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def sniffed_kind(head: bytes) -> str | None:
    """The kind from a file's first bytes (magic numbers; OBJ and ASCII STL by their first keywords)."""
    if head.startswith(b"glTF"):
        return "glb"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"ply\n") or head.startswith(b"ply\r\n"):
        return "ply"
    text = head.lstrip()
    if text.startswith(b"solid ") and b"facet" in head:
        return "stl"
    if text.startswith(b"{") and b'"asset"' in head:
        return "gltf"
    keywords = {line.split(maxsplit=1)[0] for line in text.splitlines() if line.strip()}
    if keywords & {b"v", b"vt", b"vn", b"f", b"mtllib", b"usemtl", b"o", b"g"} and b"v" in keywords:
        return "obj"
    return None


def kind_of(url: str, content_type: str | None, head: bytes) -> str | None:
    """What a downloaded output is: by extension, else Content-Type, else its first bytes.

    A generic Content-Type (``application/octet-stream``, ``binary/octet-stream``) says nothing and
    is skipped; an extension or type that contradicts the magic bytes of a GLB or zip loses to them.
    """
    sniffed = sniffed_kind(head)
    named = extension_kind(url) or content_type_kind(content_type)
    if sniffed in ("glb", "zip") and named not in ("usdz", "3mf", sniffed):
        return sniffed
    return named or sniffed


def is_mesh(kind: str | None) -> bool:
    return kind in MESH_KINDS


def mesh_rank(kind: str | None) -> int:
    """Lower is better; non-meshes rank last."""
    return MESH_KINDS.index(kind) if kind in MESH_KINDS else len(MESH_KINDS)


# ==== GLB checks ==================================================================================
#
# Verify a GLB file and read its statistics.
#
# Up to ``FULL_PARSE_MAX_BYTES`` the whole mesh is parsed by trimesh (vertices, faces, bounds of the
# scene). Larger files are checked structurally instead — header, JSON chunk, every buffer view inside
# the binary chunk, accessor counts, and the bounds glTF requires on POSITION — reading only the JSON:
# parsing a 100 MB mesh whole costs several times its size in memory, and fifty at once would not
# fit. Full parses are also limited to a few at a time.

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
