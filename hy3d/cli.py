"""``hy3d run | run-sharded | estimate | demo | emulator | server``.

Exit codes for ``run``: 0 every item landed, 1 some item did not, 2 usage or configuration
error (missing or rejected API key, an API root that cannot be reached, unreadable manifest,
unwritable output, no Prefect server) — always a one-line message, never a traceback; 130 / 143
stopped by Ctrl-C (SIGINT) / SIGTERM (flows/pipeline.py: no new submits, what is paid for kept in
the ledger, the run summary written; a re-run resumes). Configuration is checked before Prefect is
imported or any server started: such an error costs a second or two, not 20.

Without ``PREFECT_API_URL``, ``run`` and ``demo`` use hy3d's long-lived local Prefect server
(:mod:`hy3d.local_server`; ``hy3d server status|start|stop``), or with ``HY3D_EPHEMERAL=1``
Prefect's temporary server per run.

Sections: the flags, made from the option models, then the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Union, cast, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flows.options import FlowOptions, Options, from_flat
from hy3d.local_server import apply_defaults

if TYPE_CHECKING:
    from prefect import State

    from flows.options import RunOptions, ShardedRunOptions
    from flows.sharded import ShardedRunSummary
    from tasks.client import WaveSpeedSettings

# ==== Flags =======================================================================================
#
# The CLI's flags, made from the flows' option models (:mod:`flows.options`).
#
# Every option becomes ``--its-name`` (a trailing ``_s`` dropped: ``--wait-timeout``) with the model's
# type, description and default; a dict option is a repeatable ``--singular KEY=VALUE``
# (``--storage-option``, ``--input``); a list a comma-separated value. Flags left out are absent from
# the parsed namespace, so the model's own defaults apply, and the model checks every bound: an
# option is declared once. Importing this does not import Prefect.

SHORT_FLAGS = {"output": "-o"}


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, VALUE parsed as JSON when it can be."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


class _KeyValues(argparse.Action):
    """A repeatable ``--flag KEY=VALUE`` collected into one dict."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: Any = None) -> None:
        key, item = value
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), key: item})


def flag_name(name: str, info: FieldInfo) -> str:
    """``wait_timeout_s`` -> ``--wait-timeout``; ``storage_options`` (a dict) -> ``--storage-option``."""
    stem = name.removesuffix("_s")
    if _origin(info.annotation) is dict:
        stem = stem.removesuffix("s")
    return "--" + stem.replace("_", "-")


def option_fields(options: type[FlowOptions]) -> Iterator[tuple[str, FieldInfo]]:
    """Every option of a flow, its groups' fields in place of the groups, in the form's order."""
    for name, info in options.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            yield from group.model_fields.items()
        else:
            yield name, info


def add_option_flags(
    parser: argparse.ArgumentParser, options: type[FlowOptions], *, all_optional: bool = False
) -> None:
    """One flag per option of ``options`` (``manifest`` a positional argument). With
    ``all_optional``, no flag is required (``hy3d estimate`` takes the flags of ``hy3d run``)."""
    for name, info in option_fields(options):
        if name == "manifest":
            parser.add_argument("manifest", help=info.description)
            continue
        flags = [flag_name(name, info), *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else [])]
        kind = _kind(info)
        if "action" not in kind and "choices" not in kind:
            kind.setdefault("metavar", flags[0].removeprefix("--").replace("-", "_").upper())
        if all_optional:
            kind.pop("required", None)
        parser.add_argument(*flags, dest=name, help=_help(info), **kind)


def options_from_args(options: type[Options], args: argparse.Namespace, **fallbacks: Any) -> Options:
    """The options the flags give (the rest: ``fallbacks``, then the model's defaults). Raises
    ValueError in one line naming the flag, for a value the model refuses."""
    fields = dict(option_fields(options))
    given = {**fallbacks, **{name: value for name, value in vars(args).items() if name in fields}}
    try:
        return from_flat(options, given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = next(str(part) for part in reversed(error["loc"]) if isinstance(part, str))  # not a list index
        flag = flag_name(name, fields[name]) if name in fields else name
        raise ValueError(f"{flag}: {error['msg']}") from exc


def _unwrapped(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _origin(annotation: Any) -> Any:
    """What an option holds, ``None`` taken out: ``int | None`` -> ``int``, ``dict[str, Any]`` -> ``dict``."""
    unwrapped = _unwrapped(annotation)
    return get_origin(unwrapped) or unwrapped


def _kind(info: FieldInfo) -> dict[str, Any]:
    """argparse's keywords for an option: how its value is read, its choices, whether required."""
    origin = _origin(info.annotation)
    kind: dict[str, Any] = {"default": argparse.SUPPRESS}
    if info.is_required():
        kind["required"] = True
    if origin is bool:
        kind["action"] = "store_true"
    elif origin is dict:
        kind.update(action=_KeyValues, type=key_value, metavar="KEY=VALUE")
    elif origin is Literal:
        kind["choices"] = list(get_args(info.annotation))
    elif origin in (int, float):
        kind["type"] = origin
    elif origin in (list, tuple):  # comma-separated, split by the model
        item = get_args(_unwrapped(info.annotation))[0]
        kind["metavar"] = ",".join(get_args(item)) if get_origin(item) is Literal else "A,B,..."
    return kind


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if default not in (None, False, (), [], {}):
        shown = ",".join(default) if isinstance(default, tuple) else default
        text += f" (default {shown})"
    return text.replace("%", "%%")


# ==== Commands ====================================================================================

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
    from hy3d.progress import print_summary, use_terminal

    print_summary(summary, terminal=use_terminal(), list_skipped=list_skipped)


def run_flow(options: RunOptions, *, verbose: bool = False) -> int:
    """Check configuration up front (exit 2, one line), then run the flow and map its outcome."""
    apply_defaults()
    _check_before_prefect(options)
    # Prefect only now: importing it takes seconds, starting a server more.
    from hy3d.local_server import prefect_api
    from tasks.errors import PrefectUnavailableError

    try:
        with prefect_api(say=_say):
            return _run_flow(options, verbose=verbose)
    except PrefectUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def _check_before_prefect(options: RunOptions) -> None:
    """What the flow would stop on, checked here first, the API key and root last (one request): a
    configuration error costs no other request and does not wait for Prefect to start."""
    from flows.options import check_options, environment_settings, read_manifest
    from tasks.errors import ConfigurationError
    from tasks.storage import writable_storage

    try:
        spec, _ = check_options(options)
        settings = environment_settings(options)
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
    from flows.pipeline import exit_code
    from flows.progress import RunFailedError, RunInterruptedError, RunSummary

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
    from flows.progress import ItemStatus, not_landed_lines

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
