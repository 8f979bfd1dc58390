"""What both flows check before any work, each failure one ConfigurationError naming what to fix.

The CLI runs the same checks before Prefect is imported (:mod:`hy3d.cli`), so that a wrong option
costs a second, not a server start-up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from flows.manifest import Manifest, load_manifest
from flows.options import SHARED_RATE_LIMIT, Limits, RunOptions, ShardedRunOptions
from tasks.deliverables import DeliverableSettings, check_available
from tasks.errors import ConfigurationError
from tasks.models import ModelSpec, check_model
from tasks.storage import Storage, writable_storage

if TYPE_CHECKING:
    from prefect import Task

AnyLimits = TypeVar("AnyLimits", bound=Limits)


@dataclass(frozen=True)
class RunSetup:
    """A run's checked configuration: the model, the deliverables, the manifest's rows, the output."""

    spec: ModelSpec
    deliverables: DeliverableSettings
    manifest: Manifest
    storage: Storage


def check_options(options: RunOptions | ShardedRunOptions) -> tuple[ModelSpec, DeliverableSettings]:
    """The model, its extra inputs, the formats and what they need installed."""
    spec, advanced = check_model(options.model), options.advanced
    unknown = sorted(set(advanced.inputs) - spec.option_fields)
    if unknown:
        accepted = ", ".join(sorted(spec.option_fields)) or "none besides the image"
        raise ConfigurationError(f"inputs {unknown} are not inputs of {spec.id} (it accepts: {accepted})")
    deliverables = DeliverableSettings.from_parameters(
        options.formats, advanced.web_texture_px, advanced.max_faces
    )
    check_available(deliverables)  # a missing extra or tool: one line, before anything is paid
    limits = options.limits
    if limits.rate_limit_name and not limits.submits_per_minute:
        raise ConfigurationError("rate_limit_name needs submits_per_minute (the rate to enforce)")
    return spec, deliverables


def read_manifest(
    options: RunOptions | ShardedRunOptions, spec: ModelSpec, *, check_exists: bool = True
) -> Manifest:
    """The manifest's rows (only ``advanced.rows`` when given: one chunk of a sharded run)."""
    loaded = load_manifest(
        options.manifest,
        options.advanced.storage_options,
        check_exists=check_exists,
        known_fields=spec.option_fields,
        primary=spec.primary,
        image_columns=spec.extra_image_columns,
    )
    rows = options.advanced.rows
    if rows is None:
        return loaded
    wanted = set(rows)
    return replace(
        loaded,
        items=[item for item in loaded.items if item.row in wanted],
        errors=[error for error in loaded.errors if error.row in wanted],
    )


async def check_setup(options: RunOptions | ShardedRunOptions, *, check_exists: bool = True) -> RunSetup:
    """Everything a run needs before it starts, checked in the order a person fixes it."""
    spec, deliverables = check_options(options)
    manifest = await asyncio.to_thread(partial(read_manifest, options, spec, check_exists=check_exists))
    storage = await asyncio.to_thread(writable_storage, options.output, options.advanced.storage_options)
    return RunSetup(spec, deliverables, manifest, storage)


def shared_limits(limits: AnyLimits) -> AnyLimits:
    """The limits every chunk of a sharded run gets: the in-flight cap as named ('' or null: none)
    and, with ``submits_per_minute``, one rate limit for all."""
    rate = limits.rate_limit_name or (SHARED_RATE_LIMIT if limits.submits_per_minute else None)
    in_flight = limits.concurrency_limit_name or None
    return type(limits)(
        **{**limits.model_dump(), "concurrency_limit_name": in_flight, "rate_limit_name": rate}
    )


async def ensure_limits(limits: Limits, concurrency: int) -> int:
    """Create the Prefect global limits the options name (if missing); the queue headroom to use."""
    from tasks.limits import ensure_global_limit, queue_headroom_for  # Prefect: not for the CLI's checks

    headroom = queue_headroom_for(concurrency, limits.queue_headroom)
    try:
        if limits.concurrency_limit_name:
            await ensure_global_limit(limits.concurrency_limit_name, concurrency + headroom)
        if limits.rate_limit_name and limits.submits_per_minute:
            per_minute = limits.submits_per_minute
            await ensure_global_limit(limits.rate_limit_name, per_minute, per_minute=per_minute)
    except Exception as exc:  # the server refusing (bad name...) is a configuration problem
        raise ConfigurationError(f"cannot set up the Prefect concurrency limits: {exc}") from exc
    return headroom


async def submit_task_for(cache_storage_block: str | None) -> Task[..., Any]:
    """The submit task, with its cache records and results on the named filesystem block if any
    (so that workers on different hosts share the submit cache)."""
    from prefect.blocks.core import Block
    from prefect.exceptions import ObjectNotFound
    from prefect.filesystems import WritableFileSystem

    from tasks.submit import submit

    if not cache_storage_block:
        return submit
    try:
        block = await Block.aload(cache_storage_block)
    except (ValueError, ObjectNotFound) as exc:
        raise ConfigurationError(
            f"cannot load the cache storage block {cache_storage_block!r} (expected 'type-slug/name', "
            f"e.g. 'remote-file-system/hy3d-cache'): {exc}"
        ) from exc
    if not isinstance(block, WritableFileSystem):
        raise ConfigurationError(f"block {cache_storage_block!r} is not a writable filesystem block")
    return submit.with_options(result_storage=block)
