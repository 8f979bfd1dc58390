"""``hy3d run | run-sharded | estimate | demo | emulator | server``.

Exit codes for ``run``: 0 every item landed, 1 some item did not, 2 usage or configuration
error (missing or rejected API key, an API root that cannot be reached, unreadable manifest,
unwritable output, no Prefect server) — always a one-line message, never a traceback; 130 / 143
stopped by Ctrl-C (SIGINT) / SIGTERM (flows/interrupt.py: no new submits, what is paid for kept in
the ledger, the run summary written; a re-run resumes). Configuration is checked before Prefect is
imported or any server started: such an error costs a second or two, not 20.

Without ``PREFECT_API_URL``, ``run`` and ``demo`` use hy3d's long-lived local Prefect server
(:mod:`hy3d.local_server`; ``hy3d server status|start|stop``), or with ``HY3D_EPHEMERAL=1``
Prefect's temporary server per run.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    from prefect import State

from hy3d.options import (
    add_concurrency_options,
    add_formats_options,
    add_item_options,
    add_key_value_option,
    add_manifest_argument,
    add_model_option,
    add_resubmit_options,
)
from hy3d.prefect_env import apply_defaults

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
# Printed when a signal ends a run before it could write its summary (before or after its items).
INTERRUPTED = "hy3d: interrupted by {}; re-run the same command to resume: nothing paid for is paid again"


class UsageError(Exception):
    """Bad arguments or configuration: reported in one line, exit code 2."""


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_manifest_argument(parser)
    parser.add_argument("--output", "-o", required=True, help="Destination: any fsspec URL or local folder.")
    add_model_option(parser)
    add_concurrency_options(parser)
    add_item_options(parser)
    parser.add_argument(
        "--submits-per-minute",
        type=int,
        default=None,
        help="Cap on submits per minute (WaveSpeed Bronze tier: 2). Default: no cap, 429s are retried.",
    )
    parser.add_argument(
        "--task-runs",
        choices=["auto", "per-step", "none"],
        default="auto",
        help="per-step: submit/wait/fetch are Prefect task runs; none: plain coroutines (large runs); "
        "auto: per-step up to 250 items.",
    )
    parser.add_argument(
        "--max-cost",
        type=float,
        default=None,
        metavar="USD",
        help="Refuse to start when the estimate exceeds USD; stop submitting when spending would.",
    )
    add_resubmit_options(parser)
    add_formats_options(parser)
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Show Prefect's INFO lines for every flow and task run (default: warnings and errors only).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hy3d",
        description="Turn a manifest of images into GLB meshes with WaveSpeed's Hunyuan3D, on Prefect.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="Run the flow over a manifest.",
        description="Run the flow over MANIFEST and write DEST/<id>/mesh.glb and metadata.json. Reads "
        "WAVESPEED_API_KEY and WAVESPEED_BASE_URL. Exit 0 when every item landed, 1 when any did "
        "not, 2 for usage or configuration errors.",
    )
    _add_run_arguments(run)

    from hy3d.sharded import add_arguments as add_sharded_arguments

    add_sharded_arguments(
        commands.add_parser(
            "run-sharded",
            help="Run the flow over a manifest in chunks, each a flow run on a Prefect work pool.",
            description="Cut MANIFEST into chunks and run each as a flow run of a deployment (default "
            "hunyuan3d-meshes/on-demand) on its work pool, then aggregate. Needs PREFECT_API_URL (the "
            "workers' server). Exit 0 when every item landed, 1 when any did not, 2 for configuration.",
        )
    )

    estimate = commands.add_parser(
        "estimate",
        help="Print what a run would pay for, before paying anything.",
        description="Count the items a run of MANIFEST would pay for (after what is already done in "
        "--output, resumable or cached), the price per item from WaveSpeed, the total, and the account "
        "balance. Reads WAVESPEED_API_KEY and WAVESPEED_BASE_URL.",
    )
    add_manifest_argument(estimate)
    estimate.add_argument("--output", "-o", default=None, help="The output a run would write to (optional).")
    add_model_option(estimate)
    add_key_value_option(estimate, "--input", dest="inputs")
    add_key_value_option(estimate, "--storage-option", dest="storage_options")

    demo = commands.add_parser(
        "demo",
        help="Run the flow on bundled sample images against a local emulator.",
        description="Start the WaveSpeed emulator on a free loopback port and run the same flow over "
        "the sample images shipped with this package.",
    )
    demo.add_argument(
        "--output", "-o", default="demo-output", help="Folder for the meshes (default ./demo-output)."
    )
    demo.add_argument("--latency", type=float, default=2.0, help="Emulated generation time, seconds.")

    emulator = commands.add_parser(
        "emulator",
        help="Run the WaveSpeed emulator in the foreground.",
        description="A local HTTP server implementing the WaveSpeed v3 contract, with fault switches.",
    )
    from emulator.cli import add_arguments

    add_arguments(emulator)

    server = commands.add_parser(
        "server",
        help="The local Prefect server that runs use without PREFECT_API_URL: status, start, stop.",
        description="Without PREFECT_API_URL, `hy3d run` starts a Prefect server in the background on "
        "first use (UI on http://127.0.0.1:4242, or HY3D_SERVER_PORT) and later runs reuse it; it "
        "stops after HY3D_SERVER_IDLE_TIMEOUT seconds idle (default 3600; 0: never). HY3D_EPHEMERAL=1 "
        "makes each run start Prefect's temporary server instead.",
    )
    server.add_argument("action", choices=["status", "start", "stop"], help="status (default), start or stop")
    return parser


def _print_summary(summary: Any, *, list_skipped: bool = True) -> None:
    from hy3d.progress import use_terminal
    from hy3d.summary import print_summary

    print_summary(summary, terminal=use_terminal(), list_skipped=list_skipped)


def run_flow(
    manifest: str,
    output: str,
    *,
    model: str,
    concurrency: int,
    storage_options: dict[str, Any],
    queue_headroom: int | None = None,
    inputs: dict[str, Any],
    wait_timeout_s: float | None,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    submits_per_minute: int | None = None,
    max_cost: float | None = None,
    task_runs: str = "auto",
    formats: tuple[str, ...] = ("glb",),
    web_texture_px: int = 1024,
    max_faces: int | None = None,
    verbose: bool = False,
) -> int:
    """Check configuration up front (exit 2, one line), then run the flow and map its outcome.

    What the flow would stop on is checked here first, the API key and root last (one request):
    a configuration error costs no other request and does not wait for Prefect to start."""
    apply_defaults()
    from flows.manifest import load_manifest
    from tasks.errors import (
        DeliverablesUnavailableError,
        InvalidSettingsError,
        ManifestError,
        MissingAPIKeyError,
        OutputNotWritableError,
        UnknownFormatError,
        UnknownModelError,
    )
    from tasks.models import check_model
    from tasks.settings import load_settings

    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if queue_headroom is not None and queue_headroom < 0:
        raise UsageError("--queue-headroom must not be negative")
    if max_cost is not None and max_cost < 0:
        raise UsageError("--max-cost must not be negative")
    if submits_per_minute is not None and submits_per_minute < 1:
        raise UsageError("--submits-per-minute must be at least 1")
    from tasks.deliverables import DeliverableSettings
    from tasks.deliverables import check_available as check_formats

    try:
        check_formats(DeliverableSettings.from_parameters(formats, web_texture_px, max_faces))
    except (DeliverablesUnavailableError, UnknownFormatError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        settings = load_settings()
        settings.require_api_key()
    except (MissingAPIKeyError, InvalidSettingsError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        spec = check_model(model)
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from exc
    try:
        load_manifest(
            manifest,
            storage_options,
            known_fields=spec.option_fields,
            primary=spec.primary,
            image_columns=spec.extra_image_columns,
        )
    except ManifestError as exc:
        raise UsageError(str(exc)) from exc

    from tasks.storage import writable_storage

    try:
        writable_storage(output, storage_options)
    except OutputNotWritableError as exc:
        raise UsageError(str(exc)) from exc
    _check_api(settings)

    # Prefect only now: importing it takes seconds, starting a server more.
    from hy3d.prefect_env import prefect_api
    from tasks.errors import PrefectUnavailableError

    try:
        with prefect_api(say=_say):
            return _run_flow(
                manifest=manifest,
                output=output,
                model=model,
                concurrency=concurrency,
                queue_headroom=queue_headroom,
                storage_options=storage_options,
                inputs=inputs,
                wait_timeout_s=wait_timeout_s,
                retry_failed=retry_failed,
                resubmit_unknown=resubmit_unknown,
                submits_per_minute=submits_per_minute,
                max_cost=max_cost,
                task_runs=task_runs,
                formats=formats,
                web_texture_px=web_texture_px,
                max_faces=max_faces,
                verbose=verbose,
            )
    except PrefectUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def _say(line: str) -> None:
    print(f"hy3d: {line}", file=sys.stderr, flush=True)


def _run_flow(
    *,
    manifest: str,
    output: str,
    model: str,
    concurrency: int,
    storage_options: dict[str, Any],
    queue_headroom: int | None,
    inputs: dict[str, Any],
    wait_timeout_s: float | None,
    retry_failed: bool,
    resubmit_unknown: bool,
    submits_per_minute: int | None,
    max_cost: float | None,
    task_runs: str,
    formats: tuple[str, ...],
    web_texture_px: int,
    max_faces: int | None,
    verbose: bool,
) -> int:
    from prefect.exceptions import TerminationSignal

    from flows.hunyuan3d import generate_meshes
    from flows.interrupt import exit_code
    from flows.records import RunFailedError, RunInterruptedError, RunSummary

    run = cast(
        "Coroutine[Any, Any, State[Any]]",
        generate_meshes(
            manifest=manifest,
            output=output,
            model=model,
            concurrency=concurrency,
            queue_headroom=queue_headroom,
            storage_options=storage_options or None,
            inputs=inputs or None,
            wait_timeout_s=wait_timeout_s,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            submits_per_minute=submits_per_minute,
            max_cost=max_cost,
            task_runs=task_runs,
            formats=formats,
            web_texture_px=web_texture_px,
            max_faces=max_faces,
            return_state=True,
        ),
    )
    from hy3d.progress import run_display, use_terminal

    try:
        with run_display(verbose=verbose, terminal=use_terminal()):
            state = asyncio.run(run)
    except TerminationSignal:  # SIGTERM before or after the flow's items, where Prefect handles it
        print(INTERRUPTED.format("SIGTERM"), file=sys.stderr)
        return EXIT_SIGTERM
    result = asyncio.run(state.aresult(raise_on_failure=False)) if state.data is not None else None
    if isinstance(result, RunSummary):
        _print_summary(result)
        return EXIT_OK
    if isinstance(result, RunInterruptedError):
        _print_summary(result.summary, list_skipped=False)
        print(f"hy3d: {result}", file=sys.stderr)
        return exit_code(result.signum)
    if isinstance(result, RunFailedError):
        _print_summary(result.summary)
        if result.summary.stop_reason:
            raise UsageError(result.summary.stop_reason)
        return EXIT_ITEMS_FAILED
    raise UsageError(state.message or f"the flow ended {state.name}")


def _check_api(settings: Any) -> None:
    """The flow's first request, made here: a wrong key or an API root that cannot be reached is
    one line (exit 2) within seconds."""
    from tasks.client import WaveSpeedClient
    from tasks.errors import APIUnreachableError, AuthenticationError

    async def check() -> None:
        client = WaveSpeedClient(settings)  # not `async with`: that would start webhook mode
        try:
            await client.check_access()
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except (AuthenticationError, APIUnreachableError) as exc:
        raise UsageError(str(exc)) from exc


def run_estimate(args: argparse.Namespace) -> int:
    apply_defaults()
    from hy3d.estimate import estimate_manifest
    from tasks.errors import (
        InvalidSettingsError,
        ManifestError,
        MissingAPIKeyError,
        UnknownModelError,
        WaveSpeedError,
    )
    from tasks.settings import load_settings

    try:
        load_settings().require_api_key()
        estimate, rejected = asyncio.run(
            estimate_manifest(
                args.manifest,
                model=args.model,
                output=args.output,
                inputs=dict(args.inputs),
                storage_options=dict(args.storage_options),
            )
        )
    except (
        MissingAPIKeyError,
        InvalidSettingsError,
        UnknownModelError,
        ManifestError,
        WaveSpeedError,
    ) as exc:
        raise UsageError(str(exc)) from exc
    for line in estimate.lines():
        print(line)
    if rejected:
        print(f"rejected rows (not counted; `hy3d run` lists why): {rejected}")
    return EXIT_OK


def run_server_command(action: str) -> int:
    from hy3d import local_server
    from tasks.errors import PrefectUnavailableError

    try:
        if action == "stop":
            print(
                "stopped the local Prefect server"
                if local_server.stop(say=_say)
                else "no local Prefect server runs"
            )
            return EXIT_OK
        if action == "start":
            state, started = local_server.ensure(say=_say, register=False)
            print(("started: " if started else "already running: ") + state.describe())
            return EXIT_OK
        running = local_server.status()
        if running is None:
            print(f"no local Prefect server runs (its files: {local_server.server_home()})")
            return EXIT_OK
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(running.started_at))
        print(f"running since {since}: {running.describe()}")
        print(f"PREFECT_API_URL={running.api_url}  (to point other Prefect commands at it)")
        return EXIT_OK
    except PrefectUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_flow(
                args.manifest,
                args.output,
                model=args.model,
                concurrency=args.concurrency,
                queue_headroom=args.queue_headroom,
                storage_options=dict(args.storage_options),
                inputs=dict(args.inputs),
                wait_timeout_s=args.wait_timeout,
                retry_failed=args.retry_failed,
                resubmit_unknown=args.resubmit_unknown,
                submits_per_minute=args.submits_per_minute,
                max_cost=args.max_cost,
                task_runs=args.task_runs,
                formats=args.formats,
                web_texture_px=args.web_texture_px,
                max_faces=args.max_faces,
                verbose=args.verbose,
            )
        if args.command == "run-sharded":
            from hy3d.sharded import run_from_args

            return run_from_args(args)
        if args.command == "estimate":
            return run_estimate(args)
        if args.command == "demo":
            from hy3d.demo import run_demo

            return run_demo(args.output, latency_s=args.latency)
        if args.command == "emulator":
            from emulator.cli import serve

            return serve(args)
        if args.command == "server":
            return run_server_command(args.action)
    except UsageError as exc:
        print(f"hy3d: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(INTERRUPTED.format("SIGINT"), file=sys.stderr)
        return EXIT_SIGINT
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def run_then_exit_quickly(run: Callable[[], int]) -> NoReturn:
    """Exit with ``run()``'s code without the interpreter's teardown of every module (Prefect,
    pydantic...: 0.5-0.7 s, after the work is done). Prefect's queues of logs and events are drained
    first (at thread shutdown), then the other exit handlers run (a temporary server is stopped):
    this one was registered first, so it runs last, flushes stdout and stderr and ends the process."""
    code = 1

    def exit_now() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    atexit.register(exit_now)
    try:
        code = run()
    except SystemExit as exc:  # --help, a usage error from argparse
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    sys.exit(code)


def console() -> NoReturn:
    """The ``hy3d`` script."""
    run_then_exit_quickly(main)


if __name__ == "__main__":
    console()
