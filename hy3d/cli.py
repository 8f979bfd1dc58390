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
from hy3d.options import add_option_flags, options_from_args
from hy3d.prefect_env import apply_defaults

if TYPE_CHECKING:
    from flows.options import RunOptions, ShardedRunOptions
    from flows.sharded import ShardedRunSummary
    from tasks.settings import WaveSpeedSettings

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
# Printed when a signal ends a run before it could write its summary (before or after its items).
INTERRUPTED = "hy3d: interrupted by {}; re-run the same command to resume: nothing paid for is paid again"


class UsageError(Exception):
    """Bad arguments or configuration: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hy3d",
        description="Turn a manifest of images into GLB meshes with WaveSpeed's Hunyuan3D, on Prefect.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_flow_commands(commands)
    _add_tool_commands(commands)
    return parser


def _add_flow_commands(commands: Any) -> None:
    """``run``, ``run-sharded`` and ``estimate``: their flags are the flows' options."""
    from flows.options import RunOptions, ShardedRunOptions

    run = commands.add_parser(
        "run",
        help="Run the flow over a manifest.",
        description="Run the flow over MANIFEST and write DEST/<id>/mesh.glb and metadata.json. Reads "
        "WAVESPEED_API_KEY and WAVESPEED_BASE_URL. Exit 0 when every item landed, 1 when any did "
        "not, 2 for usage or configuration errors.",
    )
    add_option_flags(run, RunOptions)
    run.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Show Prefect's INFO lines for every flow and task run (default: warnings and errors only).",
    )
    sharded = commands.add_parser(
        "run-sharded",
        help="Run the flow over a manifest in chunks, each a flow run on a Prefect work pool.",
        description="Cut MANIFEST into chunks and run each as a flow run of a deployment (default "
        "hunyuan3d-meshes/on-demand) on its work pool, then aggregate. Needs PREFECT_API_URL (the "
        "workers' server). Exit 0 when every item landed, 1 when any did not, 2 for configuration.",
    )
    add_option_flags(sharded, ShardedRunOptions)
    estimate = commands.add_parser(
        "estimate",
        help="Print what a run would pay for, before paying anything.",
        description="Count the items a run of MANIFEST would pay for (after what is already done in "
        "--output, resumable or cached), the price per item from WaveSpeed, the total, and the account "
        "balance. Takes the flags of `hy3d run` (--output optional). Reads WAVESPEED_API_KEY and "
        "WAVESPEED_BASE_URL.",
    )
    add_option_flags(estimate, RunOptions, all_optional=True)


def _add_tool_commands(commands: Any) -> None:
    """``demo``, ``emulator`` and ``server``."""
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


def _print_summary(summary: Any, *, list_skipped: bool = True) -> None:
    from hy3d.progress import use_terminal
    from hy3d.summary import print_summary

    print_summary(summary, terminal=use_terminal(), list_skipped=list_skipped)


def run_flow(options: RunOptions, *, verbose: bool = False) -> int:
    """Check configuration up front (exit 2, one line), then run the flow and map its outcome."""
    apply_defaults()
    _check_before_prefect(options)
    # Prefect only now: importing it takes seconds, starting a server more.
    from hy3d.prefect_env import prefect_api
    from tasks.errors import PrefectUnavailableError

    try:
        with prefect_api(say=_say):
            return _run_flow(options, verbose=verbose)
    except PrefectUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def _check_before_prefect(options: RunOptions) -> None:
    """What the flow would stop on, checked here first, the API key and root last (one request): a
    configuration error costs no other request and does not wait for Prefect to start."""
    from flows.checks import check_options, read_manifest
    from tasks.errors import ConfigurationError
    from tasks.settings import load_settings
    from tasks.storage import writable_storage

    try:
        spec, _ = check_options(options)
        settings = None if options.advanced.credentials_block else load_settings()
        if settings is not None:
            settings.require_api_key()
        read_manifest(options, spec)
        writable_storage(options.output, options.advanced.storage_options)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from exc
    if settings is not None:  # a Credentials block is read by the flow, on the Prefect server
        _check_api(settings)


def _say(line: str) -> None:
    print(f"hy3d: {line}", file=sys.stderr, flush=True)


def _run_flow(options: RunOptions, *, verbose: bool) -> int:
    from flows.hunyuan3d import generate_meshes
    from flows.options import flow_parameters
    from hy3d.progress import run_display, use_terminal

    with run_display(verbose=verbose, terminal=use_terminal()):
        state = _final_state(generate_meshes(**flow_parameters(options), return_state=True))
    return state if isinstance(state, int) else _exit_code(state, _print_summary)


def run_sharded(options: ShardedRunOptions) -> int:
    """The sharded flow, run from this process; its chunks run on the deployment's work pool."""
    apply_defaults()
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UsageError(
            "set PREFECT_API_URL to the Prefect server your workers poll: the chunks run on its work pool"
        )
    from flows.options import flow_parameters
    from flows.sharded import generate_meshes_sharded

    try:
        state = _final_state(generate_meshes_sharded(**flow_parameters(options), return_state=True))
    except Exception as exc:  # the server unreachable, refused... one line, not a traceback
        raise UsageError(f"the sharded run could not start: {type(exc).__name__}: {exc}") from exc
    return state if isinstance(state, int) else _exit_code(state, _print_sharded_summary)


def _final_state(run: Any) -> State[Any] | int:
    """Run a flow (the coroutine of a ``return_state=True`` call): its final state, or the exit code
    of a SIGTERM that came before or after its items, where Prefect handles it."""
    from prefect.exceptions import TerminationSignal

    try:
        return asyncio.run(cast("Coroutine[Any, Any, State[Any]]", run))
    except TerminationSignal:
        print(INTERRUPTED.format("SIGTERM"), file=sys.stderr)
        return EXIT_SIGTERM


def _exit_code(state: State[Any], show: Callable[..., None]) -> int:
    """The exit code of a flow's final state, its summary printed by ``show``."""
    from flows.interrupt import exit_code
    from flows.records import RunFailedError, RunInterruptedError, RunSummary

    result = asyncio.run(state.aresult(raise_on_failure=False)) if state.data is not None else None
    if isinstance(result, RunSummary):
        show(result)
        return EXIT_OK
    if isinstance(result, RunInterruptedError):
        show(result.summary, list_skipped=False)
        print(f"hy3d: {result}", file=sys.stderr)
        return exit_code(result.signum)
    if isinstance(result, RunFailedError):
        show(result.summary)
        if result.summary.stop_reason:
            raise UsageError(result.summary.stop_reason)
        return EXIT_ITEMS_FAILED
    raise UsageError(state.message or f"the flow ended {state.name}")


def _print_sharded_summary(summary: ShardedRunSummary, *, list_skipped: bool = True) -> None:
    from flows.records import ItemStatus, not_landed_lines

    print(summary.headline())
    for chunk in summary.chunks:
        print(f"  {chunk.describe()}")
    items = [item for item in summary.items if list_skipped or item.status is not ItemStatus.skipped]
    for line in not_landed_lines(items):
        print(f"  {line}")
    if summary.cost_line():
        print(summary.cost_line())
    for advice in summary.advice:
        print(f"- {advice}")
    if summary.summary_url:
        print(f"summary: {summary.summary_url}")


def _check_api(settings: WaveSpeedSettings) -> None:
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


def run_estimate(options: RunOptions) -> int:
    apply_defaults()
    from hy3d.estimate import estimate_manifest
    from tasks.errors import ConfigurationError, WaveSpeedError

    try:
        estimate, rejected = asyncio.run(estimate_manifest(options))
    except (ConfigurationError, WaveSpeedError) as exc:
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
        if args.command in ("run", "estimate", "run-sharded"):
            return _run_command(args)
        if args.command == "demo":
            from hy3d.demo import run_demo

            return run_demo(args.output, latency_s=args.latency, run=run_flow)
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


def _run_command(args: argparse.Namespace) -> int:
    """``run``, ``estimate`` (the flags of ``run``, ``--output`` optional) or ``run-sharded``."""
    from flows.options import RunOptions, ShardedRunOptions

    try:
        if args.command == "run-sharded":
            return run_sharded(options_from_args(ShardedRunOptions, args))
        options = options_from_args(RunOptions, args, output="")
    except ValueError as exc:  # an option out of bounds, named by its flag
        raise UsageError(str(exc)) from exc
    return run_estimate(options) if args.command == "estimate" else run_flow(options, verbose=args.verbose)


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
