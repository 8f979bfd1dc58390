"""Scale out: the sharded flow spreads a manifest over two process workers on a real Prefect server.

The session's ``prefect server start`` (``tests/prefect_server.py``); a work pool of this module's own
(``hy3d-scale``, so ``tests/test_deployments.py``'s ``hy3d`` pool is never touched), deployed from the
real ``prefect.yaml`` with only the pool renamed; two ``prefect worker start`` subprocesses with their
own homes sharing one result store (the submit cache, as a ``cache_storage_block`` would on two hosts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from emulator import EmulatorServer
from flows.manifest import load_manifest
from flows.sharded import manifest_rows, plan_chunks
from hy3d.cli import main as cli_main
from tests.conftest import client_env, run_flow
from tests.prefect_server import (
    PREFECT,
    ROOT,
    ProcessEnv,
    prefect_env,
    prefect_server,
    start_group,
    stop_group,
    tail,
)
from tests.test_deployments import assert_meshes_landed, on_server, read_deployment

__all__ = ["prefect_server"]  # the session fixture, used below

POOL = "hy3d-scale"
CHILD = "hunyuan3d-meshes/on-demand"
PARENT = "hunyuan3d-meshes-sharded/on-demand"
IMAGES, CHUNK = 8, 2  # 4 chunks
KILL_IMAGES, KILL_CHUNK = 6, 3  # 2 chunks: one per worker
RUN_TIMEOUT_S = 150.0


# ---- processes ---------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a process worker starts each flow run in a session of its own, so
    its process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and every process it started: a host lost at once."""
    for pid in [process.pid, *descendants(process.pid)]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(30)


@contextmanager
def worker(env: ProcessEnv, name: str, log: Path, limit: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process worker on the module's pool, stopped (with any flow run it still runs) at the end."""
    command = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
    command += ["--prefetch-seconds", "1", "--limit", str(limit)]
    process = start_group(command, env, log)
    try:
        yield process
    finally:
        leftovers = descendants(process.pid)
        stop_group(process)
        for pid in leftovers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for_workers(server: str, names: set[str], timeout_s: float = 120.0) -> None:
    """Until every named worker has sent the pool a heartbeat."""

    async def online(client: PrefectClient) -> set[str]:
        return {found.name for found in await client.read_workers_for_work_pool(POOL)}

    deadline = time.monotonic() + timeout_s
    while not names <= (seen := on_server(server, online)):
        assert time.monotonic() < deadline, f"workers {sorted(names - seen)} never polled {POOL}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def scale_pool(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """This module's process pool, and ``prefect --no-prompt deploy --all`` of the real ``prefect.yaml``
    with only the pool renamed to it (run from the repo root, like a user would)."""
    home = tmp_path_factory.mktemp("scale-deploy-home")
    env = prefect_env(prefect_server, home)
    config = (ROOT / "prefect.yaml").read_text()
    assert config.count("      name: hy3d\n") == 3, "every deployment of prefect.yaml is on the hy3d pool"
    prefect_file = home / "prefect.yaml"
    prefect_file.write_text(config.replace("      name: hy3d\n", f"      name: {POOL}\n"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
        )

    created = cli("work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = cli("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return prefect_server


@pytest.fixture
def scale_env(scale_pool: str, emulator: EmulatorServer, tmp_path: Path) -> Callable[[str], ProcessEnv]:
    """Environment of a worker: its own home (as on its own host), one shared result store, fast polls
    and heartbeats (every 2 s: a dead worker is noticed after 10 s, the parent's floor)."""
    results = tmp_path / "results"

    def env(name: str) -> ProcessEnv:
        return prefect_env(
            scale_pool,
            tmp_path / f"home-{name}",
            {
                **client_env(emulator),
                "PREFECT_LOCAL_STORAGE_PATH": str(results),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
                "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            },
        )

    return env


# ---- data --------------------------------------------------------------------------------------------
def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` different PNG images (different bytes: different content keys, one payment each)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.new("RGB", (160, 160), (10 + 15 * index, 40, 200 - 12 * index))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20 + 2 * index, 24, 140, 136 - 3 * index), fill=(250, 240 - 17 * index, 30 + 9 * index))
        path = folder / f"item-{index:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def write_manifest(folder: Path, images: list[Path], extra: list[str] | None = None) -> Path:
    """A CSV manifest next to the images; row ``n`` (header = row 1) is ``images[n - 2]``."""
    manifest = folder / "manifest.csv"
    lines = ["image", *(path.name for path in images), *(extra or [])]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def summary_of(output: Path, flow_run_id: Any) -> dict[str, Any]:
    found = sorted((output / "runs").glob(f"*-{flow_run_id}.json"))
    assert len(found) == 1, sorted(path.name for path in (output / "runs").glob("*.json"))
    data: dict[str, Any] = json.loads(found[0].read_text())
    return data


def chunk_runs(api_url: str, since: float) -> list[FlowRun]:
    async def go(client: PrefectClient) -> list[FlowRun]:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["hy3d-chunk"])), limit=200
        )
        return [run for run in runs if run.created is not None and run.created.timestamp() >= since]

    return on_server(api_url, go)


def create_limit(api_url: str, limit: int) -> str:
    name = f"hy3d-scale-{uuid.uuid4().hex[:8]}"

    async def go(client: PrefectClient) -> None:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))

    on_server(api_url, go)
    return name


# ---- fast checks -------------------------------------------------------------------------------------
def test_chunks_are_cut_by_sorted_row_and_stable_across_runs(tmp_path: Path) -> None:
    rows = [9, 2, 5, 3, 8, 4, 7, 6]
    chunks = plan_chunks(rows, 3)

    assert [chunk.rows for chunk in chunks] == [(2, 3, 4), (5, 6, 7), (8, 9)]
    assert [chunk.index for chunk in chunks] == [1, 2, 3]
    assert plan_chunks(reversed(rows), 3) == chunks
    assert plan_chunks(rows, 100)[0].rows == tuple(sorted(rows))
    with pytest.raises(ValueError):
        plan_chunks(rows, 0)
    # Rejected rows are chunked too, so each is reported by exactly one chunk.
    images = make_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path / "images", images, extra=["missing.png"])
    assert manifest_rows(load_manifest(str(manifest))) == {
        2: ("item-00", str(images[0])),
        3: ("item-01", str(images[1])),
        4: ("row-4", ""),
    }


def test_cli_flags_parse_into_the_sharded_flows_options() -> None:
    from flows.options import ShardedRunOptions, shared_limits
    from hy3d.cli import build_parser, options_from_args

    flags = ["run-sharded", "m.csv", "-o", "out", "--chunk-size", "7", "--concurrency-limit-name", ""]
    options = options_from_args(ShardedRunOptions, build_parser().parse_args(flags))
    sharding, limits = options.sharding, options.limits
    assert (sharding.chunk_size, limits.concurrency_limit_name, sharding.deployment) == (
        7,
        "",
        "hunyuan3d-meshes/on-demand",
    )
    # '' runs the chunks without a shared in-flight cap; by default they share hy3d-in-flight.
    assert shared_limits(limits).concurrency_limit_name is None
    default = ShardedRunOptions(manifest="m.csv", output="out")
    assert shared_limits(default.limits).concurrency_limit_name == "hy3d-in-flight"
    # A null from the UI form or a script means no shared cap too, as it always did.
    no_cap = ShardedRunOptions(manifest="m.csv", output="out", limits={"concurrency_limit_name": None})
    assert shared_limits(no_cap.limits).concurrency_limit_name is None


def test_rows_parameter_processes_only_those_rows(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    images = make_images(tmp_path / "images", 4)
    manifest = write_manifest(tmp_path / "images", images, extra=["missing.png"])  # row 6: invalid
    dest = tmp_path / "out"

    with temporary_settings({PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: tmp_path / "r"}):
        state, summary = run_flow(manifest=str(manifest), output=str(dest), rows=[3, 5])
        assert state.is_completed(), state.message
        assert [(item.row, item.id, item.status.value) for item in summary.items] == [
            (3, "item-01", "completed"),
            (5, "item-03", "completed"),
        ]
        state, summary = run_flow(manifest=str(manifest), output=str(dest), rows=[2, 6])

    assert not state.is_completed()
    assert [(item.row, item.id, item.status.value) for item in summary.items] == [
        (2, "item-00", "completed"),
        (6, "row-6", "invalid"),
    ]
    assert_meshes_landed(dest, ["item-00", "item-01", "item-03"])
    assert not (dest / "item-02").exists()
    assert emulator.stats.submits_accepted == 3


def test_cli_configuration_errors_exit_2_in_one_line(
    prefect_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "images", 1)
    manifest = str(write_manifest(tmp_path / "images", images))

    command = ["run-sharded", manifest, "-o", str(tmp_path / "o")]
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        code = cli_main([*command, "--deployment", "nope/nope"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hy3d: error: deployment 'nope/nope' not found") and "\n" not in err

    with temporary_settings({PREFECT_API_URL: ""}):
        assert cli_main(command) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err
    assert cli_main([*command, "--chunk-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "hy3d: error: --chunk-size: Input should be greater than or equal to 1"
    )


def test_claims_of_runs_that_are_over_are_released(prefect_server: str, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.states import Completed, Crashed, Running

    from flows.sharded import release_claims_of_finished_runs
    from tasks.storage import Storage

    @flow(name="hy3d-scale-claims")
    def placeholder() -> None:
        pass

    storage = Storage(str(tmp_path / "out"))
    claims = tmp_path / "out" / ".hy3d" / "claims"
    claims.mkdir(parents=True)

    async def go(client: PrefectClient) -> int:
        for name, state in (("crashed", Crashed()), ("completed", Completed()), ("running", Running())):
            run = await client.create_flow_run(placeholder, state=state)
            holder = {"run": str(run.id), "host": "elsewhere", "pid": 1, "expires_at": time.time() + 3600}
            (claims / f"{name}.json").write_text(json.dumps(holder))
        (claims / "local.json").write_text(json.dumps({"run": "not-a-flow-run", "pid": 1}))
        return await release_claims_of_finished_runs(storage, client)

    assert on_server(prefect_server, go) == 2
    assert sorted(path.name for path in claims.iterdir()) == ["local.json", "running.json"]


# ---- two workers ---------------------------------------------------------------------------------------
def test_parent_deployment_spreads_chunks_over_two_workers_under_the_global_cap(
    scale_pool: str,
    scale_env: Callable[[str], ProcessEnv],
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    parent = read_deployment(scale_pool, PARENT)
    assert parent.entrypoint == "flows/sharded.py:generate_meshes_sharded"
    assert parent.work_pool_name == POOL
    emulator.config.latency_s, emulator.config.jitter_s = 1.5, 0.1  # long enough to overlap
    emulator.config.max_concurrency = 10  # the account would allow 10: only the Prefect limit holds it to 2
    limit = create_limit(scale_pool, 2)
    images = make_images(tmp_path / "images", IMAGES)
    manifest = write_manifest(tmp_path / "images", images)
    dest = tmp_path / "meshes"
    since = time.time() - 1
    parameters = {
        "manifest": str(manifest),
        "output": str(dest),
        "concurrency": 5,  # per chunk, well over the cap
        "sharding": {"chunk_size": CHUNK, "poll_interval_s": 1},
        "limits": {"concurrency_limit_name": limit},
    }

    with (
        worker(scale_env("a"), "worker-a", tmp_path / "a.log", limit=3),
        worker(scale_env("b"), "worker-b", tmp_path / "b.log", limit=3),
    ):
        # Both workers polling before the run starts: under load one worker can otherwise start late
        # enough for the other to take every chunk, and the spreading would not be tested at all.
        wait_for_workers(scale_pool, {"worker-a", "worker-b"})

        async def go(client: PrefectClient) -> FlowRun:
            run = await arun_deployment(
                PARENT, client=client, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=1
            )
            assert isinstance(run, FlowRun)
            return run

        run = on_server(scale_pool, go)
        logs = f"\n--- a ---\n{tail(tmp_path / 'a.log')}\n--- b ---\n{tail(tmp_path / 'b.log')}"
        assert run.state is not None and run.state.is_completed(), f"{run.state}{logs}"

    summary = summary_of(dest, run.id)
    assert summary["counts"] == {"completed": IMAGES}, summary["chunks"]
    assert summary["deployment"] == CHILD
    chunks = summary["chunks"]
    assert [(chunk["index"], chunk["first_row"], chunk["last_row"]) for chunk in chunks] == [
        (1, 2, 3),
        (2, 4, 5),
        (3, 6, 7),
        (4, 8, 9),
    ]
    assert {chunk["state"] for chunk in chunks} == {"Completed"}
    assert {chunk["worker"] for chunk in chunks} == {"worker-a", "worker-b"}, chunks  # both shared the work
    assert_meshes_landed(dest, [path.stem for path in images])
    assert emulator.stats.submits_accepted == IMAGES
    assert all(emulator.stats.submits_for_image_bytes(path.read_bytes()) == 1 for path in images)
    assert emulator.stats.peak_in_flight == 2, emulator.stats.snapshot()  # the cap was reached, never passed

    children = {str(child.id): child for child in chunk_runs(scale_pool, since)}
    assert set(children) == {chunk["flow_run_id"] for chunk in chunks}
    for chunk in chunks:
        child = children[chunk["flow_run_id"]]
        assert child.parameters["limits"]["concurrency_limit_name"] == limit
        assert child.parameters["advanced"]["rows"] == list(range(chunk["first_row"], chunk["last_row"] + 1))
        assert child.parent_task_run_id is not None  # linked to the parent as a subflow run
        own = summary_of(dest, child.id)
        assert own["total"] == CHUNK and own["flow_run_id"] == str(child.id)


def test_killed_worker_chunks_are_given_up_and_a_rerun_pays_nothing_twice(
    scale_pool: str,
    scale_env: Callable[[str], ProcessEnv],
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    # Long enough generation that worker A dies with its predictions paid for and still running.
    emulator.config.latency_s, emulator.config.jitter_s = 3.0, 0.1
    emulator.config.max_concurrency = 0
    images = make_images(tmp_path / "images", KILL_IMAGES)
    manifest = write_manifest(tmp_path / "images", images)
    dest = tmp_path / "meshes"
    ledger = dest / ".hy3d" / "predictions"
    # No global in-flight limit here: slots held by a killed process stay taken until their Prefect
    # lease (300 s) runs out. Each chunk submits all its rows at once, so A's submits are all answered
    # (nothing is left "in flight on the wire") when it is killed.
    command = [
        sys.executable,
        "-m",
        "hy3d.cli",
        "run-sharded",
        str(manifest),
        "-o",
        str(dest),
        "--chunk-size",
        str(KILL_CHUNK),
    ]
    command += ["--concurrency", str(KILL_CHUNK), "--concurrency-limit-name", "", "--poll-interval", "1"]
    parent_env = prefect_env(scale_pool, tmp_path / "home-parent")
    since = time.time() - 1

    # A takes one chunk (its limit); B, started next, takes the other, and runs both on the re-run.
    with worker(scale_env("a"), "worker-a", tmp_path / "a.log", limit=1) as worker_a:
        first = subprocess.Popen(
            command, cwd=tmp_path, env=dict(parent_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: any(on_worker(run, "worker-a") for run in chunk_runs(scale_pool, since)))
            with worker(scale_env("b"), "worker-b", tmp_path / "b.log", limit=2):
                on_a = wait_for_paid_chunks_on(scale_pool, "worker-a", since, images, emulator, ledger)
                kill_tree(worker_a)
                out, _ = first.communicate(timeout=RUN_TIMEOUT_S)
                first_output = out.decode()
                assert first.returncode == 1, first_output

                killed = {str(run.id) for run in on_a}
                states = {str(run.id): run.state for run in chunk_runs(scale_pool, since)}
                assert len(states) == KILL_IMAGES // KILL_CHUNK
                for run_id, state in states.items():
                    assert state is not None
                    if run_id in killed:  # given up by the parent, not left Running forever
                        assert state.name == "Crashed", state
                        assert "worker-a" in (state.message or "")
                        assert run_id in first_output  # the failure names the chunk's flow run
                    else:
                        assert state.is_completed(), state
                paid_before = emulator.stats.submits_accepted

                rerun = subprocess.run(
                    command,
                    cwd=tmp_path,
                    env=dict(parent_env),
                    capture_output=True,
                    text=True,
                    timeout=RUN_TIMEOUT_S,
                )
                assert rerun.returncode == 0, rerun.stdout + rerun.stderr + tail(tmp_path / "b.log")
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()

    assert_meshes_landed(dest, [path.stem for path in images])
    assert emulator.stats.submits_accepted == KILL_IMAGES == paid_before  # the re-run paid for nothing
    assert all(emulator.stats.submits_for_image_bytes(path.read_bytes()) == 1 for path in images)
    summaries = [json.loads(path.read_text()) for path in sorted((dest / "runs").glob("*.json"))]
    last = next(s for s in reversed(summaries) if "chunks" in s)
    assert {c["state"] for c in last["chunks"]} == {"Completed"}
    # B's rows were done; A's predictions, paid for before it died, were resumed from the ledger.
    assert last["counts"] == {"already_done": KILL_CHUNK, "completed": KILL_CHUNK}, last["counts"]


def on_worker(run: FlowRun, name: str) -> bool:
    return run.labels.get("prefect.worker.name") == name


def wait_for(condition: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def wait_for_paid_chunks_on(
    api_url: str, name: str, since: float, images: list[Path], emulator: EmulatorServer, ledger: Path
) -> list[FlowRun]:
    """Worker ``name``'s unfinished chunks, once it runs some whose every submit was accepted, and no
    submit anywhere is between its intent and its answer (so none is on the wire when it is killed)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        mine = [
            run
            for run in chunk_runs(api_url, since)
            if run.labels.get("prefect.worker.name") == name
            and run.state is not None
            and not run.state.is_final()
        ]
        running = [run for run in mine if run.state is not None and run.state.is_running()]
        rows = [row for run in running for row in run.parameters["advanced"]["rows"]]
        paid = all(emulator.stats.submits_for_image_bytes(images[row - 2].read_bytes()) == 1 for row in rows)
        try:
            entries = [json.loads(path.read_text()) for path in ledger.glob("*.json")]
        except (OSError, ValueError):
            continue  # being written
        if running and paid and all(entry["state"] == "submitted" for entry in entries):
            return mine
        time.sleep(0.05)
    seen = [
        (run.name, run.state_name, run.labels.get("prefect.worker.name"))
        for run in chunk_runs(api_url, since)
    ]
    raise AssertionError(f"worker {name} never ran a chunk with its submits done: {seen}")
