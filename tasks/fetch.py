"""The ``fetch`` task: stream a prediction's outputs into storage, verify, publish all-or-nothing.

Outputs are downloaded to staging files first and told apart by content (:mod:`tasks.formats`):
the best mesh among them becomes ``mesh.glb`` — as delivered when it is a GLB, converted when it is
an OBJ, a zip or another format trimesh reads, the original then kept as ``original.<ext>``.
Every other output (previews...) is stored next to it as ``output-N.<ext>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.client import DownloadedFile, WaveSpeedClient
from tasks.errors import DownloadError, is_transient
from tasks.formats import SNIFF_BYTES, is_mesh, kind_of, mesh_rank
from tasks.meshinfo import MeshStats, inspect_glb
from tasks.retrying import retry_async
from tasks.storage import Storage, discard


@dataclass(frozen=True)
class FetchedFile:
    url: str  # where it was published
    source_url: str
    size: int
    sha256: str
    kind: str | None = None  # what the content is (glb, obj, zip, png...), see tasks.formats


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
