"""Reading and writing a GLB's JSON and binary chunks, and re-encoding its textures.

Only what the deliverables need: meshes from WaveSpeed (and trimesh) keep every buffer view in the
GLB's binary chunk, so images are rewritten there and the chunk is laid out again."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image

from tasks.errors import GlbFormatError

MAGIC = b"glTF"
JSON_CHUNK = b"JSON"
BIN_CHUNK = b"BIN\x00"
_HEADER = struct.Struct("<4sII")
_CHUNK = struct.Struct("<I4s")
WEBP_EXTENSION = "EXT_texture_webp"
WEBP_QUALITY = 85


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the binary chunk (b"" when absent)."""
    if len(data) < _HEADER.size:
        raise GlbFormatError("too short for a GLB")
    magic, version, length = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != 2 or length > len(data):
        raise GlbFormatError("not a glTF 2.0 binary")
    offset = _HEADER.size
    document: dict[str, Any] | None = None
    binary = b""
    while offset + _CHUNK.size <= length:
        size, kind = _CHUNK.unpack_from(data, offset)
        body = data[offset + _CHUNK.size : offset + _CHUNK.size + size]
        if kind == JSON_CHUNK and document is None:
            document = json.loads(body.decode("utf-8"))
        elif kind == BIN_CHUNK and not binary:
            binary = bytes(body)
        offset += _CHUNK.size + size
    if document is None:
        raise GlbFormatError("GLB without a JSON chunk")
    return document, binary


def write_glb(document: dict[str, Any], binary: bytes) -> bytes:
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    parts = [_CHUNK.pack(len(text), JSON_CHUNK), text]
    if binary:
        body = binary + b"\x00" * (-len(binary) % 4)
        parts += [_CHUNK.pack(len(body), BIN_CHUNK), body]
    payload = b"".join(parts)
    return _HEADER.pack(MAGIC, 2, _HEADER.size + len(payload)) + payload


def _view_bytes(document: dict[str, Any], binary: bytes, index: int) -> bytes:
    view = document["bufferViews"][index]
    if view.get("buffer", 0) != 0:
        raise GlbFormatError("a buffer view outside the GLB's binary chunk")
    start = int(view.get("byteOffset", 0))
    end = start + int(view["byteLength"])
    if end > len(binary):
        raise GlbFormatError(f"buffer view {index} ends past the binary chunk")
    return binary[start:end]


def _webp(data: bytes, max_px: int) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        has_alpha = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
        image = opened.convert("RGBA" if has_alpha else "RGB")
    if max(image.size) > max_px:
        image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def textures_to_webp(data: bytes, max_px: int) -> bytes:
    """The GLB with every embedded image resized to at most ``max_px`` on its longer side and
    re-encoded as WebP (``EXT_texture_webp``, required: no PNG fallback is kept, that is the point).
    Buffer views are laid out again, 4-byte aligned, in their order."""
    document, binary = read_glb(data)
    images = document.get("images") or []
    if not images:
        return data
    views = document.get("bufferViews") or []
    replaced: dict[int, bytes] = {}
    for image in images:
        index = image.get("bufferView")
        if index is None:
            continue  # an external or data: URI image: left as it is
        replaced[index] = _webp(_view_bytes(document, binary, index), max_px)
        image["mimeType"] = "image/webp"
    if not replaced:
        return data
    out = bytearray()
    for index, view in enumerate(views):
        chunk = replaced.get(index)
        if chunk is None:
            chunk = _view_bytes(document, binary, index)
        out += b"\x00" * (-len(out) % 4)
        view["byteOffset"] = len(out)
        view["byteLength"] = len(chunk)
        out += chunk
    document["buffers"][0]["byteLength"] = len(out)
    webp_sources = {i for i, image in enumerate(images) if image.get("mimeType") == "image/webp"}
    for texture in document.get("textures") or []:
        source = texture.get("source")
        if source in webp_sources:
            del texture["source"]
            texture.setdefault("extensions", {})[WEBP_EXTENSION] = {"source": source}
    for key in ("extensionsUsed", "extensionsRequired"):
        names = document.setdefault(key, [])
        if WEBP_EXTENSION not in names:
            names.append(WEBP_EXTENSION)
    return write_glb(document, bytes(out))
