"""``hy3d estimate``: what a run would pay for, before paying anything."""

from __future__ import annotations

import asyncio
from functools import partial

from flows.options import RunOptions, check_options, read_manifest, run_settings, submit_task_for
from flows.pipeline import Estimate, PreparedItem, estimate_cost, prepare_items
from tasks.client import WaveSpeedClient
from tasks.storage import Storage
from tasks.submit import SubmitCache


async def estimate_manifest(options: RunOptions) -> tuple[Estimate, int]:
    """The estimate of a run with these options (``output`` empty: nothing is done yet), and how
    many rows were rejected (they would not be paid for either). It reads the run's key (its
    credentials block, if named) and submit cache (its cache block, if named); the other options of
    a run do not change what it pays."""
    spec, _ = check_options(options)
    settings = await run_settings(options)
    settings.require_api_key()
    cache = await SubmitCache.of(await submit_task_for(options.advanced.cache_storage_block))
    loaded = await asyncio.to_thread(partial(read_manifest, options, spec))
    storage_options = options.advanced.storage_options
    storage = Storage(options.output, storage_options) if options.output else None
    async with WaveSpeedClient(settings) as client:
        await client.check_access()  # a wrong key or API root: one line at once, not retries per item
        entries = await prepare_items(
            loaded.items,
            spec=spec,
            inputs=options.advanced.inputs,
            api_root=settings.base_url,
            storage_options=storage_options,
            check_image_urls=settings.check_image_urls,
        )
        prepared = [entry for entry in entries if isinstance(entry, PreparedItem)]
        rejected = len(loaded.errors) + len(entries) - len(prepared)
        return await estimate_cost(client, prepared, storage=storage, cache=cache), rejected
