"""``hy3d run-sharded``: run the sharded flow from this process; the chunks run on a work pool.

The parent runs here (it only schedules, waits and aggregates); each chunk is a flow run of a deployment
(default ``hunyuan3d-meshes/on-demand``) that the workers polling its work pool pick up, on any host.
So it needs a real Prefect server, the one the workers use: ``PREFECT_API_URL`` must be set.

Exit codes as for ``hy3d run``: 0 every item landed, 1 some item (or chunk) did not, 2 usage or
configuration error, always as one line; 130 / 143 stopped by Ctrl-C / SIGTERM (the chunks not
finished are cancelled, each keeping what it paid for; the summary is written; a re-run resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from hy3d.cli import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    INTERRUPTED,
    UsageError,
)
from hy3d.options import (
    add_concurrency_options,
    add_formats_options,
    add_item_options,
    add_manifest_argument,
    add_model_option,
    add_resubmit_options,
)
from hy3d.prefect_env import apply_defaults

if TYPE_CHECKING:
    from prefect import State

    from flows.sharded import ShardedRunSummary

# The flow's defaults (flows/sharded.py), repeated so that building the CLI does not import Prefect.
DEFAULT_CHUNK_SIZE = 100
DEFAULT_DEPLOYMENT = "hunyuan3d-meshes/on-demand"
DEFAULT_IN_FLIGHT_LIMIT = "hy3d-in-flight"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``hy3d run-sharded`` (those of ``hy3d run`` that make sense per chunk, and more)."""
    add_manifest_argument(parser)
    parser.add_argument(
        "--output", "-o", required=True, help="Destination every worker can write: any fsspec URL."
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"Manifest rows per chunk, one flow run each (default {DEFAULT_CHUNK_SIZE}).",
    )
    parser.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"Deployment running each chunk on its work pool (default {DEFAULT_DEPLOYMENT}).",
    )
    add_model_option(parser)
    add_concurrency_options(parser, per=" per chunk")
    parser.add_argument(
        "--concurrency-limit-name",
        default=DEFAULT_IN_FLIGHT_LIMIT,
        help="Prefect global concurrency limit capping predictions in flight across all chunks "
        f"(default {DEFAULT_IN_FLIGHT_LIMIT}; '' for none).",
    )
    parser.add_argument(
        "--submits-per-minute",
        type=int,
        default=None,
        help="Cap on submits per minute across all chunks (a Prefect rate limit). Default: no cap.",
    )
    parser.add_argument("--rate-limit-name", default=None, help="Name of that Prefect rate limit.")
    add_item_options(
        parser, storage_option_help="fsspec option for manifest, images and output (repeatable)."
    )
    parser.add_argument(
        "--chunk-timeout",
        type=float,
        default=None,
        help="Give a chunk up when it has not finished this many seconds after it started. Default: none "
        "(chunks whose worker stops heartbeating are given up anyway).",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="Seconds between checks on the chunks (default 5)."
    )
    parser.add_argument(
        "--cache-storage-block", default=None, help="Filesystem block holding the submit cache."
    )
    parser.add_argument("--credentials-block", default=None, help="Saved WaveSpeed Credentials block.")
    add_resubmit_options(
        parser,
        retry_failed_help="Submit again transiently failed predictions. Billed.",
        resubmit_unknown_help="Submit again items whose earlier submit may have been accepted. "
        "May bill twice.",
    )
    add_formats_options(parser)


def _print_summary(summary: ShardedRunSummary, *, list_skipped: bool = True) -> None:
    print(summary.headline())
    for chunk in summary.chunks:
        print(f"  {chunk.describe()}")
    from flows.records import ItemStatus, not_landed_lines

    items = [item for item in summary.items if list_skipped or item.status is not ItemStatus.skipped]
    for line in not_landed_lines(items):
        print(f"  {line}")
    if summary.cost_line():
        print(summary.cost_line())
    for advice in summary.advice:
        print(f"- {advice}")
    if summary.summary_url:
        print(f"summary: {summary.summary_url}")


def run_sharded(
    manifest: str,
    output: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    deployment: str = DEFAULT_DEPLOYMENT,
    model: str | None = None,
    concurrency: int = 2,
    queue_headroom: int | None = None,
    storage_options: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    wait_timeout_s: float | None = None,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    submits_per_minute: int | None = None,
    concurrency_limit_name: str | None = DEFAULT_IN_FLIGHT_LIMIT,
    rate_limit_name: str | None = None,
    cache_storage_block: str | None = None,
    credentials_block: str | None = None,
    chunk_timeout_s: float | None = None,
    poll_interval_s: float = 5.0,
    formats: tuple[str, ...] = ("glb",),
    web_texture_px: int = 1024,
    max_faces: int | None = None,
) -> int:
    """Run the sharded flow here and map its outcome to an exit code; configuration errors are
    printed as one line on stderr (exit 2). ``concurrency_limit_name=None`` runs without a global cap."""
    if model is None:
        from tasks.settings import DEFAULT_MODEL

        model = DEFAULT_MODEL
    try:
        return _run(
            manifest,
            output,
            chunk_size=chunk_size,
            deployment=deployment,
            model=model,
            concurrency=concurrency,
            queue_headroom=queue_headroom,
            storage_options=storage_options or None,
            inputs=inputs or None,
            wait_timeout_s=wait_timeout_s,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            submits_per_minute=submits_per_minute,
            concurrency_limit_name=concurrency_limit_name or None,
            rate_limit_name=rate_limit_name or None,
            cache_storage_block=cache_storage_block,
            credentials_block=credentials_block,
            chunk_timeout_s=chunk_timeout_s,
            poll_interval_s=poll_interval_s,
            formats=formats,
            web_texture_px=web_texture_px,
            max_faces=max_faces,
        )
    except UsageError as exc:
        print(f"hy3d: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(manifest: str, output: str, **parameters: Any) -> int:
    apply_defaults()
    for name in ("chunk_size", "concurrency"):
        if parameters[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if parameters["queue_headroom"] is not None and parameters["queue_headroom"] < 0:
        raise UsageError("--queue-headroom must not be negative")
    if parameters["submits_per_minute"] is not None and parameters["submits_per_minute"] < 1:
        raise UsageError("--submits-per-minute must be at least 1")
    for name in ("chunk_timeout_s", "poll_interval_s", "wait_timeout_s"):
        if parameters[name] is not None and parameters[name] <= 0:
            raise UsageError(f"{name} must be positive")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UsageError(
            "set PREFECT_API_URL to the Prefect server your workers poll: the chunks run on its work pool"
        )

    from prefect.exceptions import TerminationSignal

    from flows.interrupt import exit_code
    from flows.records import ChunksFailedError, RunFailedError, RunInterruptedError
    from flows.sharded import ShardedRunSummary, generate_meshes_sharded

    run = cast(
        "Coroutine[Any, Any, State[Any]]",
        generate_meshes_sharded(manifest=manifest, output=output, **parameters, return_state=True),
    )
    try:
        state = asyncio.run(run)
    except TerminationSignal:  # SIGTERM before or after the chunks, where Prefect handles it
        print(INTERRUPTED.format("SIGTERM"), file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as exc:  # the server unreachable, refused... one line, not a traceback
        raise UsageError(f"the sharded run could not start: {type(exc).__name__}: {exc}") from exc
    result = asyncio.run(state.aresult(raise_on_failure=False)) if state.data is not None else None
    if isinstance(result, ShardedRunSummary):
        _print_summary(result)
        return EXIT_OK
    if isinstance(result, RunInterruptedError) and isinstance(result.summary, ShardedRunSummary):
        _print_summary(result.summary, list_skipped=False)
        print(f"hy3d: {result}", file=sys.stderr)
        return exit_code(result.signum)
    if isinstance(result, ChunksFailedError):
        _print_summary(result.summary)
        if result.summary.stop_reason:
            raise UsageError(result.summary.stop_reason)
        return EXIT_ITEMS_FAILED
    if isinstance(result, RunFailedError):
        return EXIT_ITEMS_FAILED
    raise UsageError(state.message or f"the sharded flow ended {state.name}")


def run_from_args(args: argparse.Namespace) -> int:
    """``hy3d run-sharded`` with the arguments of :func:`add_arguments`."""
    return run_sharded(
        args.manifest,
        args.output,
        chunk_size=args.chunk_size,
        deployment=args.deployment,
        model=args.model,
        concurrency=args.concurrency,
        queue_headroom=args.queue_headroom,
        storage_options=dict(args.storage_options),
        inputs=dict(args.inputs),
        wait_timeout_s=args.wait_timeout,
        retry_failed=args.retry_failed,
        resubmit_unknown=args.resubmit_unknown,
        submits_per_minute=args.submits_per_minute,
        concurrency_limit_name=args.concurrency_limit_name,
        rate_limit_name=args.rate_limit_name,
        cache_storage_block=args.cache_storage_block,
        credentials_block=args.credentials_block,
        chunk_timeout_s=args.chunk_timeout,
        poll_interval_s=args.poll_interval,
        formats=args.formats,
        web_texture_px=args.web_texture_px,
        max_faces=args.max_faces,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hy3d.sharded ...`` (the same as ``hy3d run-sharded ...`` once the CLI has it)."""
    parser = argparse.ArgumentParser(
        prog="hy3d run-sharded",
        description="Run the flow over MANIFEST in chunks, each a flow run on a Prefect work pool.",
    )
    add_arguments(parser)
    try:
        return run_from_args(parser.parse_args(argv))
    except KeyboardInterrupt:
        print(INTERRUPTED.format("SIGINT"), file=sys.stderr)
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
