"""The ``fetch`` task: stream a prediction's outputs into storage, verify, publish all-or-nothing.

The mesh is chosen by extension (``.glb``; v3 models also return previews and other files); every
other output is stored next to it and listed in the metadata.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.client import WaveSpeedClient
from tasks.download import DownloadedFile, download_to_file
from tasks.errors import DownloadError, is_transient
from tasks.meshinfo import MeshStats, inspect_glb
from tasks.retrying import retry_async
from tasks.storage import Storage, discard

MESH_EXTENSIONS = (".glb",)


@dataclass(frozen=True)
class FetchedFile:
    url: str  # where it was published
    source_url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FetchedMesh(FetchedFile):
    stats: MeshStats = field(default_factory=lambda: MeshStats(0, 0, None))
    extras: tuple[FetchedFile, ...] = ()


def choose_mesh(outputs: list[str]) -> tuple[str, list[str]]:
    """The mesh URL and the other outputs; raises DownloadError when no output is a GLB."""
    for url in outputs:
        if urlsplit(url).path.lower().endswith(MESH_EXTENSIONS):
            return url, [other for other in outputs if other != url]
    raise DownloadError(f"none of the {len(outputs)} output(s) is a .glb mesh: {outputs[:3]}")


def extra_name(index: int, url: str) -> str:
    """``output-1.png``: numbered (names from the CDN are opaque and may collide), extension kept."""
    extension = posixpath.splitext(urlsplit(url).path)[1].lower()
    safe = extension if extension[1:].isalnum() and len(extension) <= 8 else ""
    return f"output-{index}{safe}"


def _verify_and_publish(
    storage: Storage, staged: str, parts: tuple[str, ...], *, mesh: bool
) -> MeshStats | None:
    """One worker-thread hop for everything blocking after the download (thousands of items a run
    make each hop count): check the mesh, then publish; the staged file is consumed either way."""
    try:
        stats = inspect_glb(staged) if mesh else None
    except BaseException:
        discard(staged)
        raise
    storage.publish(staged, *parts)
    return stats


async def _download_and_publish(
    client: WaveSpeedClient, url: str, storage: Storage, parts: tuple[str, ...], *, mesh: bool
) -> tuple[DownloadedFile, MeshStats | None]:
    async def attempt() -> tuple[DownloadedFile, MeshStats | None]:
        staged = await storage.small_io(storage.staging_file, *parts)
        try:
            downloaded = await download_to_file(
                client, url, staged, max_bytes=client.settings.max_output_bytes
            )
        except BaseException:
            await asyncio.to_thread(discard, staged)
            raise
        stats = await asyncio.to_thread(_verify_and_publish, storage, staged, parts, mesh=mesh)
        return downloaded, stats

    return await retry_async(
        attempt, on=is_transient, policy=client.retry_policy, what=f"download to {'/'.join(parts)}"
    )


async def fetch_outputs(
    client: WaveSpeedClient, outputs: list[str], storage: Storage, item_id: str, mesh_name: str
) -> FetchedMesh:
    """Download the mesh to a staging file, check length, GLB header and that trimesh parses it,
    then publish at ``item_id/mesh_name``; a truncated or corrupt download is retried and the final
    path is only ever written with a verified file. Other outputs follow as ``output-N.ext``."""
    mesh_url, others = choose_mesh(outputs)
    downloaded, stats = await _download_and_publish(
        client, mesh_url, storage, (item_id, mesh_name), mesh=True
    )
    assert stats is not None
    extras = []
    for index, url in enumerate(others, start=1):
        parts = (item_id, extra_name(index, url))
        extra, _ = await _download_and_publish(client, url, storage, parts, mesh=False)
        extras.append(FetchedFile(storage.url(*parts), url, extra.size, extra.sha256))
    return FetchedMesh(
        storage.url(item_id, mesh_name), mesh_url, downloaded.size, downloaded.sha256, stats, tuple(extras)
    )


@task(name="fetch", cache_policy=NO_CACHE, persist_result=False)
async def fetch(
    client: WaveSpeedClient, outputs: list[str], storage: Storage, item_id: str, mesh_name: str = "mesh.glb"
) -> FetchedMesh:
    """Download a completed prediction's outputs into ``storage`` under ``item_id/``."""
    return await fetch_outputs(client, outputs, storage, item_id, mesh_name)
