"""What kind of file an output is, told by its content rather than its name.

Signed CDN URLs often have no extension (``.../o/<token>?X-Amz-Signature=...``) and are served as
``application/octet-stream``, and v3 models list a preview before the mesh, so the order of the
outputs and their names say little. The kind is read from, in turn: the URL's extension, the
``Content-Type``, then the first bytes of the file. Pure functions: no I/O here.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

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
    """The kind named by the URL path's extension, if it names one this module knows."""
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
