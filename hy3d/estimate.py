"""``hy3d estimate``: what a run would pay for, before paying anything."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from flows.estimate import Estimate, estimate_cost
from flows.manifest import load_manifest
from flows.prepare import PreparedItem, prepare_items
from tasks.client import WaveSpeedClient
from tasks.models import check_model
from tasks.settings import load_settings
from tasks.storage import Storage
from tasks.submit import submit


async def estimate_manifest(
    manifest: str,
    *,
    model: str,
    output: str | None,
    inputs: dict[str, Any],
    storage_options: dict[str, Any],
) -> tuple[Estimate, int]:
    """The estimate, and how many rows were rejected (they would not be paid for either)."""
    spec = check_model(model)
    settings = load_settings()
    loaded = await asyncio.to_thread(
        partial(
            load_manifest,
            manifest,
            storage_options,
            known_fields=spec.option_fields,
            primary=spec.primary,
            image_columns=spec.extra_image_columns,
        )
    )
    storage = Storage(output, storage_options) if output else None
    async with WaveSpeedClient(settings) as client:
        await client.check_access()  # a wrong key or API root: one line at once, not retries per item
        entries = await prepare_items(
            loaded.items,
            spec=spec,
            inputs=inputs,
            api_root=settings.base_url,
            storage_options=storage_options,
            check_image_urls=settings.check_image_urls,
        )
        prepared = [entry for entry in entries if isinstance(entry, PreparedItem)]
        rejected = len(loaded.errors) + len(entries) - len(prepared)
        return await estimate_cost(client, prepared, storage=storage, submit_task=submit), rejected
