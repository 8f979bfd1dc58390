"""Every run option, declared once: its name, type, default, bounds and description.

The flows' parameters (and so the Prefect UI's run form), the sharded flow's chunk parameters and the
CLI's flags (:mod:`hy3d.cli`) all come from these declarations. A flow's form shows the few
fields a person changes — manifest, output, model, concurrency, budget, formats — and groups the
rest into sections: ``limits`` (limits and retries), ``advanced`` and, for the sharded flow,
``sharding``. Prefect renders each group as a nested form; Python callers pass a group as the model
(``Limits(retry_failed=True)``) or as a dict (``{"retry_failed": True}``).

Importing this does not import Prefect: the CLI builds its flags from it before anything slow starts.

Sections: the option models, then the checks a run makes of them before anything slow starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tasks.deliverables import DEFAULT_WEB_TEXTURE_PX, DeliverableSettings, FormatName, check_available
from tasks.errors import ConfigurationError
from tasks.models import DEFAULT_MODEL, KNOWN_MODELS, ModelSpec, check_model

if TYPE_CHECKING:
    from prefect import Task

    from flows.manifest import Manifest
    from tasks.client import WaveSpeedSettings
    from tasks.storage import Storage

# No `from __future__ import annotations`: the flows' annotations are these objects themselves
# (flow.serve() pickles the flows, deployments resolve their annotations at load time).


DEFAULT_CONCURRENCY = 2
DEFAULT_FORMATS: tuple[FormatName, ...] = ("glb",)
DEFAULT_DEPLOYMENT = "hunyuan3d-meshes/on-demand"
# The sharded flow's chunks share one in-flight cap and one submit rate, under these names by default.
SHARED_IN_FLIGHT_LIMIT = "hy3d-in-flight"
SHARED_RATE_LIMIT = "hy3d-submits-per-minute"
# Above this many items a run does not create three task runs per item (docs/performance.md).
AUTO_TASK_RUNS_MAX_ITEMS = 250
# Above this many items thumbnails are not rendered as items land; the gallery fills them in later.
AUTO_PREVIEWS_MAX_ITEMS = 100


def _format_names(value: Any) -> Any:
    """Format names in any case, as a list or comma-separated: ``"GLB,Web"`` -> ``["glb", "web"]``."""
    names = _comma_separated(value)
    return [name.lower() for name in names] if isinstance(names, list) else names


def _blank_is_none(value: Any) -> Any:
    """An emptied text field (the form, ``--flag ''``) means "none"."""
    return None if isinstance(value, str) and not value.strip() else value


def _comma_separated(value: Any) -> Any:
    """``"a,b"`` (a CLI flag, a UI text field) -> ``["a", "b"]``; lists pass through."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _parameter(description: str, *, extra: dict[str, Any] | None = None, **bounds: Any) -> Any:
    """A top-level flow parameter's Field. Prefect's parameter schema takes a parameter's description
    from the flow's docstring (none there: null) but keeps ``json_schema_extra``: the description
    goes there as well, so it is written once, here."""
    return Field(
        description=description, json_schema_extra={**(extra or {}), "description": description}, **bounds
    )


ManifestParam = Annotated[
    str,
    _parameter(
        "Manifest URL or path: CSV/JSONL (column 'image', optional 'id'), TXT (one image per "
        "line), a folder, or a glob such as s3://bucket/photos/*.png."
    ),
]
OutputParam = Annotated[
    str,
    _parameter(
        "Where meshes go: any fsspec URL (local path, s3://, gs://, az://, memory://); with "
        "the sharded flow, one every worker can write."
    ),
]
# A plain string checked in the flow's body (one clear error), offered as a choice in the UI form.
ModelParam = Annotated[
    str,
    _parameter("WaveSpeed Hunyuan3D model id.", extra={"enum": sorted(KNOWN_MODELS)}),
]
ConcurrencyParam = Annotated[
    int,
    _parameter(
        "Predictions WaveSpeed processes at once (per chunk in the sharded flow): your account's "
        "concurrent task limit (Bronze 2, Silver 300, Gold 3000).",
        ge=1,
        le=10_000,
    ),
]
MaxCostParam = Annotated[
    float | None,
    _parameter(
        "Budget in USD: refuse to start when the estimate exceeds it, and stop submitting when "
        "the run's spending would. Default: no budget.",
        ge=0,
    ),
]
FormatsParam = Annotated[
    tuple[FormatName, ...],
    BeforeValidator(_format_names),
    _parameter(
        "Files to deliver per item (a list, or 'glb,web,usdz'): glb (mesh.glb as WaveSpeed made "
        "it, always kept), web (mesh.web.glb: meshopt-compressed, WebP textures), usdz (mesh.usdz for AR "
        "Quick Look), stl (mesh.stl), obj (mesh.obj.zip). Items already done get the ones they lack, "
        "without a WaveSpeed call. usdz needs the extra prefect-hunyuan3d[formats]; web needs gltfpack."
    ),
]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Group):
    """How fast and how far a run goes, and when it pays again."""

    model_config = ConfigDict(title="Limits and retries")

    queue_headroom: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Predictions submitted beyond `concurrency`, queued by WaveSpeed until a slot frees, so "
        "the account never idles while a finished one is downloaded (each is billed at its submit like any "
        "other). Default: half of `concurrency`, rounded up; 0: never more than `concurrency`.",
    )
    submits_per_minute: int | None = Field(
        None,
        ge=1,
        description="Cap on submits per minute (WaveSpeed Bronze tier: 2); shared by every chunk of a "
        "sharded run. Default: no cap, 429s are retried.",
    )
    wait_timeout_s: float | None = Field(
        None,
        gt=0,
        title="Wait Timeout (s)",
        description="Deadline per prediction in seconds. Default: WAVESPEED_WAIT_TIMEOUT_S (900).",
    )
    retry_failed: bool = Field(
        False,
        description="Submit again predictions that failed with a transient code (5000/5003/5004). "
        "Billed again.",
    )
    resubmit_unknown: bool = Field(
        False,
        description="Submit again items whose earlier submit may have been accepted (timeout, 502/504). "
        "May bill twice.",
    )
    concurrency_limit_name: str | None = Field(
        None,
        description="Prefect global concurrency limit capping predictions in flight (queued ones included) "
        "across runs, created with `concurrency` + headroom slots if missing. Default: this run's own cap "
        f"only; in the sharded flow, {SHARED_IN_FLIGHT_LIMIT!r} for all its chunks (null or '' for none).",
    )
    rate_limit_name: str | None = Field(
        None,
        description="Prefect global concurrency limit used as a shared submits-per-minute rate limit, "
        f"created from `submits_per_minute` if missing (the sharded flow's default: {SHARED_RATE_LIMIT!r}).",
    )


class ShardedLimits(Limits):
    """How fast and how far a sharded run goes, and when it pays again: its chunks share one
    in-flight cap by default."""

    model_config = ConfigDict(title="Limits and retries")

    concurrency_limit_name: str | None = Field(
        SHARED_IN_FLIGHT_LIMIT,
        description="Prefect global concurrency limit capping predictions in flight (queued ones included) "
        "across every chunk, run and host, created with `concurrency` + headroom slots if missing. Null "
        "or '': each chunk has only its own cap.",
    )


class Advanced(_Group):
    """Storage, credentials, model inputs, the shape of the run in Prefect, deliverable settings."""

    model_config = ConfigDict(title="Advanced")

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for the manifest, images and output (endpoint_url, key, secret...).",
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="Extra model inputs applied to every item (e.g. seed)."
    )
    credentials_block: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Name of a saved WaveSpeed Credentials block. Default: the WAVESPEED_* settings."
    )
    cache_storage_block: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        description="Saved Prefect filesystem block ('remote-file-system/NAME') holding submit cache "
        "records, so workers on different hosts share the never-pay-twice guarantee.",
    )
    task_runs: Literal["auto", "per-step", "none"] = Field(
        "auto",
        description="per-step: submit, wait and fetch are Prefect task runs (visible in the UI); none: plain "
        f"coroutines, for runs larger than the server can record; auto: per-step up to "
        f"{AUTO_TASK_RUNS_MAX_ITEMS} items.",
    )
    previews: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Render each item's preview.png and the gallery viewer's files as items land (CPU "
        f"work, more than the rest of an item's); auto: on up to {AUTO_PREVIEWS_MAX_ITEMS} items (such a run "
        "also fills in up to 200 missing ones).",
    )
    web_texture_px: int = Field(
        DEFAULT_WEB_TEXTURE_PX,
        ge=16,
        le=16384,
        title="Web Texture Size (px)",
        description="Web GLB: textures at most this many pixels on their longer side.",
    )
    max_faces: int | None = Field(
        None,
        ge=12,
        description="Web GLB and USDZ: simplify meshes with more faces to this many. Default: all.",
    )
    rows: Annotated[list[int] | None, BeforeValidator(_comma_separated)] = Field(
        None,
        description="Only these manifest rows (row numbers as in the run summary). Default: every row. The "
        "sharded flow hands each chunk its rows this way.",
    )


class Sharding(_Group):
    """How the sharded flow cuts the manifest and watches its chunks."""

    model_config = ConfigDict(title="Sharding")

    chunk_size: int = Field(100, ge=1, le=100_000, description="Manifest rows per chunk, one flow run each.")
    deployment: str = Field(
        DEFAULT_DEPLOYMENT,
        description="Deployment that runs each chunk ('flow/deployment'), on the work pool the workers poll.",
    )
    chunk_timeout_s: float | None = Field(
        None,
        gt=0,
        title="Chunk Timeout (s)",
        description="Give a chunk up (its flow run set Crashed) when it has not finished this many seconds "
        "after it started. Default: no limit; chunks whose worker stops heartbeating are given up anyway.",
    )
    poll_interval_s: float = Field(
        5.0,
        gt=0,
        le=300,
        title="Poll Interval (s)",
        description="How often the parent checks on its chunks, in seconds.",
    )


def _section(group: type[_Group]) -> Any:
    """A group parameter's Field: titled as its group. Prefect titles a parameter with its name, and the
    run form heads a section with that title ("limits"); titled as the group, the parameter's title
    is dropped from the schema as the same as its definition's, and the form shows "Limits and retries"
    with the group's docstring under it."""
    return Field(json_schema_extra={"title": group.model_config.get("title") or group.__name__})


LimitsParam = Annotated[Limits, _section(Limits)]
ShardedLimitsParam = Annotated[ShardedLimits, _section(ShardedLimits)]
AdvancedParam = Annotated[Advanced, _section(Advanced)]
ShardingParam = Annotated[Sharding, _section(Sharding)]


class FlowOptions(_Group):
    """What both flows take: a flow's parameters are these fields, in this order."""

    manifest: ManifestParam
    output: OutputParam
    model: ModelParam = DEFAULT_MODEL
    concurrency: ConcurrencyParam = DEFAULT_CONCURRENCY


class RunOptions(FlowOptions):
    """The parameters of ``hunyuan3d-meshes``."""

    max_cost: MaxCostParam = None
    formats: FormatsParam = DEFAULT_FORMATS
    limits: LimitsParam = Limits()
    advanced: AdvancedParam = Advanced()


class ShardedRunOptions(FlowOptions):
    """The parameters of ``hunyuan3d-meshes-sharded``."""

    formats: FormatsParam = DEFAULT_FORMATS
    sharding: ShardingParam = Sharding()
    limits: ShardedLimitsParam = ShardedLimits()
    advanced: AdvancedParam = Advanced()


Options = TypeVar("Options", bound=FlowOptions)


def group_of(options: type[FlowOptions], name: str) -> str | None:
    """The group field of ``options`` that holds the option ``name``; None for a top-level one."""
    for field_name, info in options.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, _Group) and name in group.model_fields:
            return field_name
    return None


def grouped(options: type[FlowOptions], values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names (``retry_failed=True``), as the CLI and scripts spell them, each put into its
    group: ``{"limits": {"retry_failed": True}}``, the flow's parameters."""
    parameters: dict[str, Any] = {}
    for name, value in values.items():
        group = group_of(options, name)
        if group is None:
            parameters[name] = value
        else:
            parameters.setdefault(group, {})[name] = value
    return parameters


def from_flat(options: type[Options], values: Mapping[str, Any]) -> Options:
    """Options from flat names; raises pydantic's ValidationError naming the option."""
    return options.model_validate(grouped(options, values))


def flow_parameters(options: FlowOptions) -> dict[str, Any]:
    """The keyword arguments of the flow these options are for."""
    return {name: getattr(options, name) for name in type(options).model_fields}


# ==== Checks ======================================================================================
#
# What both flows check before any work, each failure one ConfigurationError naming what to fix.
#
# The CLI runs the same checks before Prefect is imported (:mod:`hy3d.cli`), so that a wrong option
# costs a second, not a server start-up.

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
    from flows.manifest import load_manifest  # fsspec: not for every CLI command, which imports this

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
    from tasks.storage import writable_storage

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
    from tasks.submit import ensure_global_limit, queue_headroom_for  # Prefect: not for the CLI's checks

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


def environment_settings(options: RunOptions | ShardedRunOptions) -> WaveSpeedSettings | None:
    """The client settings from ``WAVESPEED_*``, or None when a Credentials block holds them (the
    flow reads it, from the Prefect server). Imports no Prefect."""
    from tasks.client import load_settings

    return None if options.advanced.credentials_block else load_settings()


async def run_settings(options: RunOptions | ShardedRunOptions) -> WaveSpeedSettings:
    """The client settings a run uses: its Credentials block's, or ``WAVESPEED_*``."""
    from tasks.credentials import aresolve_settings

    return await aresolve_settings(options.advanced.credentials_block)
