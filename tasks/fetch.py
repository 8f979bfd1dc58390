"""The ``fetch`` task: stream an output into storage, verify it, publish it all-or-nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.client import WaveSpeedClient
from tasks.download import download_to_file
from tasks.errors import is_transient
from tasks.meshinfo import MeshStats, inspect_glb
from tasks.retrying import retry_async
from tasks.storage import Storage, discard


@dataclass(frozen=True)
class FetchedMesh:
    url: str  # the storage URL it was published at
    source_url: str
    size: int
    sha256: str
    stats: MeshStats


async def fetch_mesh(client: WaveSpeedClient, output_url: str, storage: Storage, *parts: str) -> FetchedMesh:
    """Download ``output_url`` to a staging file, check length, GLB header and that trimesh parses
    it, then publish at ``parts``. A truncated or corrupt download is retried; the final path is
    only ever written with a verified file."""

    async def attempt() -> FetchedMesh:
        staged = await asyncio.to_thread(storage.staging_file, *parts)
        try:
            downloaded = await download_to_file(
                client, output_url, staged, max_bytes=client.settings.max_output_bytes
            )
            stats = await asyncio.to_thread(inspect_glb, staged)
            await asyncio.to_thread(storage.publish, staged, *parts)
        finally:
            await asyncio.to_thread(discard, staged)
        return FetchedMesh(storage.url(*parts), output_url, downloaded.size, downloaded.sha256, stats)

    return await retry_async(
        attempt, on=is_transient, policy=client.retry_policy, what=f"download to {'/'.join(parts)}"
    )


@task(name="fetch", cache_policy=NO_CACHE, persist_result=False)
async def fetch(
    client: WaveSpeedClient, output_url: str, storage: Storage, destination: list[str]
) -> FetchedMesh:
    """``destination`` is the path under the storage root, e.g. ``["chair-01", "mesh.glb"]``."""
    return await fetch_mesh(client, output_url, storage, *destination)
