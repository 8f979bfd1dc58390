"""GLB container helpers: grow a valid GLB to a target size with an unused tail in its binary buffer."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

_MAGIC = b"glTF"
_JSON = b"JSON"
_BIN = b"BIN\x00"
_HEADER = struct.Struct("<4sII")
_CHUNK = struct.Struct("<I4s")


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def _chunks(glb: bytes, length: int) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk within the first `length` bytes, in file order."""
    offset = _HEADER.size
    while offset + _CHUNK.size <= length:
        size, kind = _CHUNK.unpack_from(glb, offset)
        start = offset + _CHUNK.size
        yield kind, glb[start : start + size]
        offset = start + size


def split_glb(glb: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the BIN chunk (b"" when absent) of a GLB file: the first of each type,
    as glTF allows one of each."""
    magic, version, length = _HEADER.unpack_from(glb, 0)
    if magic != _MAGIC or version != 2 or length > len(glb):
        raise ValueError("not a glTF 2.0 binary")
    first: dict[bytes, bytes] = {}
    for kind, body in _chunks(glb, length):
        first.setdefault(kind, body)
    if _JSON not in first:
        raise ValueError("GLB without a JSON chunk")
    return json.loads(first[_JSON].decode("utf-8")), first.get(_BIN, b"")


def join_glb(document: dict[str, Any], binary: bytes) -> bytes:
    """Assemble a GLB from a JSON document and a BIN chunk body."""
    json_chunk = _pad4(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" ")
    parts = [_CHUNK.pack(len(json_chunk), _JSON), json_chunk]
    if binary:
        bin_chunk = _pad4(binary, b"\x00")
        parts += [_CHUNK.pack(len(bin_chunk), _BIN), bin_chunk]
    body = b"".join(parts)
    return _HEADER.pack(_MAGIC, 2, _HEADER.size + len(body)) + body


def pad_glb(glb: bytes, target_bytes: int) -> bytes:
    """Return `glb` grown to about `target_bytes` (never more, within 4 bytes) by appending zero bytes
    to buffer 0 (the BIN chunk), which no accessor references. The file stays a valid GLB that loads
    to the same scene. Returns `glb` unchanged when it is already at least that large."""
    if target_bytes <= len(glb):
        return glb
    document, binary = split_glb(glb)
    buffers: list[dict[str, Any]] = document.setdefault("buffers", [])
    if not buffers:
        buffers.append({"byteLength": 0})
    new_length = len(binary)
    for _ in range(4):  # the JSON length depends on the digits of byteLength: iterate to a fixed point
        buffers[0]["byteLength"] = new_length
        json_size = len(_pad4(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" "))
        room = target_bytes - _HEADER.size - 2 * _CHUNK.size - json_size
        candidate = max(len(binary), room - room % 4)
        if candidate == new_length:
            break
        new_length = candidate
    buffers[0]["byteLength"] = new_length
    return join_glb(document, binary + bytes(new_length - len(binary)))
