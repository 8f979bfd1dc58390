"""The deployments of ``prefect.yaml``, deployed and run for real.

One ``prefect server start`` per session (``tests/prefect_server.py``); the work pool, ``prefect deploy``,
the worker and ``flow.serve()`` are the real CLI and real subprocesses, all pointed at that server by
``PREFECT_API_URL``. Flow runs reach the test's WaveSpeed emulator over loopback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.utilities.schema_tools import validate

from emulator import EmulatorServer
from flows.manifest import IMAGE_EXTENSIONS
from tests.conftest import client_env
from tests.prefect_server import (
    POOL,
    PREFECT,
    ROOT,
    Deployed,
    ProcessEnv,
    deployed,
    on_server,
    prefect_env,
    prefect_server,
    read_deployment,
    running,
    tail,
)

__all__ = ["deployed", "prefect_server"]  # the fixtures (tests/prefect_server.py), used below

FLOW = "hunyuan3d-meshes"
NIGHTLY = f"{FLOW}/nightly"
ON_DEMAND = f"{FLOW}/on-demand"
SERVED = f"{FLOW}/served"
RUN_TIMEOUT_S = 150.0
# What the UI's run form must show for each parameter: (JSON type, required).
FORM = {
    "manifest": ("string", True),
    "output": ("string", True),
    "model": ("string", False),
    "concurrency": ("integer", False),
}


def run(api_url: str, name: str, parameters: dict[str, Any]) -> FlowRun:
    """Trigger a deployment as the UI's run form does, and wait for the run to end."""

    async def go(client: PrefectClient) -> FlowRun:
        flow_run = await arun_deployment(
            name, client=client, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=1
        )
        assert isinstance(flow_run, FlowRun)
        return flow_run

    return on_server(api_url, go)


def run_artifacts(api_url: str, flow_run: FlowRun) -> dict[str, str]:
    """The run's artifacts by key (their data as text), read through the server's API."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go(client: PrefectClient) -> dict[str, str]:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
        return {artifact.key: str(artifact.data) for artifact in found if artifact.key}

    return on_server(api_url, go)


def final_state(flow_run: FlowRun, log: Path) -> str:
    state = flow_run.state
    assert state is not None and state.is_final(), f"run not finished in {RUN_TIMEOUT_S:.0f} s:\n{tail(log)}"
    assert state.is_completed(), f"{state.name}: {state.message}\n{tail(log)}"
    return state.message or ""


def assert_meshes_landed(output: Path, ids: list[str]) -> None:
    for item_id in ids:
        mesh = output / item_id / "mesh.glb"
        metadata = json.loads((output / item_id / "metadata.json").read_text())
        assert metadata["status"] == "completed", metadata
        assert mesh.read_bytes()[:4] == b"glTF"
        assert metadata["output"]["bytes"] == mesh.stat().st_size


def run_summaries(output: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((output / "runs").glob("*.json"))]


@pytest.fixture
def worker_env(prefect_server: str, emulator: EmulatorServer, tmp_path: Path) -> ProcessEnv:
    """What a worker (and the flow runs it starts) needs: the API, the WaveSpeed key and root, fast polls,
    and a private result store (the submit cache) so no other test's cache records are seen."""
    return prefect_env(
        prefect_server,
        tmp_path / "prefect-home",
        {
            **client_env(emulator),
            "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        },
    )


@pytest.fixture
def worker(worker_env: ProcessEnv, deployed: Deployed, tmp_path: Path) -> Iterator[Path]:
    """A process worker polling the ``hy3d`` pool from the repo root; yields its log."""
    log = tmp_path / "worker.log"
    command = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--prefetch-seconds", "1"]
    with running(command, worker_env, log) as process:
        yield log
        assert process.poll() is None, f"the worker died:\n{tail(log)}"


def test_deploy_all_registers_both_deployments_on_the_process_pool(
    deployed: Deployed, prefect_server: str
) -> None:
    assert deployed.pool.returncode == 0, deployed.pool.stdout + deployed.pool.stderr
    assert deployed.deploy.returncode == 0, deployed.deploy.stdout + deployed.deploy.stderr
    pool = on_server(prefect_server, lambda client: client.read_work_pool(POOL))
    assert pool.type == "process"

    # `prefect deploy` skips a bad entry with a warning and still exits 0: check each one exists.
    for name in (NIGHTLY, ON_DEMAND):
        deployment = read_deployment(prefect_server, name)
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint == "flows/hunyuan3d.py:generate_meshes"
        assert deployment.enforce_parameter_schema
        # A worker started anywhere runs the flow from the checkout the deploy was made from.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        assert deployment.description


def test_nightly_is_scheduled_and_says_it_is_incremental(deployed: Deployed, prefect_server: str) -> None:
    nightly = read_deployment(prefect_server, NIGHTLY)

    assert not nightly.paused
    assert len(nightly.schedules) == 1
    schedule = nightly.schedules[0]
    assert schedule.active
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    assert nightly.description is not None and "already_done" in nightly.description
    assert "only for the new images" in nightly.description
    # The on-demand one is for the UI's run form: never scheduled.
    assert read_deployment(prefect_server, ON_DEMAND).schedules == []


def test_nightly_parameters_are_valid_for_the_flow(deployed: Deployed, prefect_server: str) -> None:
    nightly = read_deployment(prefect_server, NIGHTLY)
    schema = nightly.parameter_openapi_schema
    assert schema is not None

    assert set(nightly.parameters) >= {"manifest", "output"}
    assert validate(nightly.parameters, schema) == []
    # The check is not vacuous: a run without the output is refused.
    assert validate({"manifest": nightly.parameters["manifest"]}, schema) != []


def test_run_form_schema_has_typed_described_parameters(deployed: Deployed, prefect_server: str) -> None:
    schema = read_deployment(prefect_server, ON_DEMAND).parameter_openapi_schema
    assert schema is not None
    properties = schema["properties"]
    required = set(schema.get("required", []))

    missing = {
        name: properties[name].get("description") for name in FORM if not properties[name].get("description")
    }
    assert missing == {}, "parameters without a description in the UI form"
    for name, (json_type, is_required) in FORM.items():
        assert properties[name]["type"] == json_type, name
        assert (name in required) is is_required, name
    assert properties["concurrency"]["minimum"] == 1
    assert properties["model"]["default"] == "wavespeed-ai/hunyuan3d/v2-mini"
    # A form a person can fill: at most 8 fields, manifest and output first; the rest in sections.
    assert len(properties) <= 8
    assert sorted(properties, key=lambda name: properties[name]["position"])[:2] == ["manifest", "output"]
    sections = {name: properties[name]["$ref"].rsplit("/", 1)[-1] for name in ("limits", "advanced")}
    limits = schema["definitions"][sections["limits"]]["properties"]
    # Optional (null: half of concurrency, rounded up), never negative; every grouped field described.
    assert limits["queue_headroom"]["description"]
    assert {"type": "integer", "minimum": 0, "maximum": 10_000} in limits["queue_headroom"]["anyOf"]
    for section in sections.values():
        fields = schema["definitions"][section]["properties"]
        assert [name for name, field in fields.items() if not field.get("description")] == [], section


def test_worker_runs_on_demand_then_nightly_pays_only_for_new_images(
    worker: Path, emulator: EmulatorServer, samples: Path, prefect_server: str, tmp_path: Path
) -> None:
    nightly = read_deployment(prefect_server, NIGHTLY)
    folder = ROOT / nightly.parameters["manifest"]
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    assert len(images) >= 2, folder
    newest = images[-1]
    (samples / newest.name).unlink()  # the folder "before the new image arrived"
    dest = tmp_path / "meshes"

    on_demand = run(prefect_server, ON_DEMAND, {"manifest": str(samples), "output": str(dest)})

    assert "landed" in final_state(on_demand, worker)
    older = [path.stem for path in images[:-1]]
    assert_meshes_landed(dest, older)
    artifacts = run_artifacts(prefect_server, on_demand)
    assert {"hy3d-progress", "hy3d-items", "hy3d-summary"} <= set(artifacts)
    assert float(artifacts["hy3d-progress"]) == 100.0
    assert all(item_id in artifacts["hy3d-items"] for item_id in older)
    assert f"{len(older)}/{len(older)} landed" in artifacts["hy3d-summary"]
    assert emulator.stats.submits_accepted == len(older)
    for path in images[:-1]:
        assert emulator.stats.submits_for_image_bytes(path.read_bytes()) == 1

    # The scheduled deployment as is, with only the output moved out of the checkout.
    scheduled = run(prefect_server, NIGHTLY, {"output": str(dest)})

    final_state(scheduled, worker)
    assert scheduled.parameters["manifest"] == nightly.parameters["manifest"]
    assert_meshes_landed(dest, [newest.stem])
    assert emulator.stats.submits_accepted == len(images)
    assert emulator.stats.submits_for_image_bytes(newest.read_bytes()) == 1
    latest = run_summaries(dest)[-1]
    assert latest["flow_run_id"] == str(scheduled.id)
    assert latest["counts"] == {"already_done": len(older), "completed": 1}


def test_flow_serve_runs_triggered_runs(
    worker_env: ProcessEnv, emulator: EmulatorServer, samples: Path, prefect_server: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    code = "from flows.hunyuan3d import generate_meshes; generate_meshes.serve(name='served')"
    with running([sys.executable, "-c", code], worker_env, log) as process:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"serve() exited:\n{tail(log)}"
            try:
                served = read_deployment(prefect_server, SERVED)
                break
            except ObjectNotFound:
                assert time.monotonic() < deadline, f"no served deployment:\n{tail(log)}"
                time.sleep(0.5)
        assert served.work_pool_name is None  # runs in the serving process, no worker

        dest = tmp_path / "served"
        flow_run = run(prefect_server, SERVED, {"manifest": str(samples), "output": str(dest)})

        final_state(flow_run, log)
    images = sorted(path for path in samples.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    assert_meshes_landed(dest, [path.stem for path in images])
    assert emulator.stats.submits_accepted == len(images)
    assert run_summaries(dest)[-1]["flow_run_id"] == str(flow_run.id)


def test_cancelling_a_run_on_a_worker_stops_it_cleanly(
    worker: Path, emulator: EmulatorServer, samples: Path, prefect_server: str, tmp_path: Path
) -> None:
    """Cancel in the UI: the worker sends SIGTERM to the flow run's process, which stops as on Ctrl-C
    (no new submits, what was paid for in the ledger, the summary written, claims released) and
    ends Cancelled."""
    from prefect.states import Cancelling

    from tests.test_flow import distinct_images, write_csv

    emulator.config.latency_s, emulator.config.jitter_s = 2.0, 0.1
    count = 8
    manifest = write_csv(samples, distinct_images(samples, count))
    dest = tmp_path / "meshes"
    parameters = {
        "manifest": str(manifest),
        "output": str(dest),
        "concurrency": 2,
        "limits": {"queue_headroom": 0},
    }

    async def start(client: PrefectClient) -> FlowRun:
        flow_run = await arun_deployment(ON_DEMAND, client=client, parameters=parameters, timeout=0)
        assert isinstance(flow_run, FlowRun)
        return flow_run

    started = on_server(prefect_server, start)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while emulator.stats.submits_accepted < 2:
        assert time.monotonic() < deadline, tail(worker)
        time.sleep(0.1)
    on_server(prefect_server, lambda client: client.set_flow_run_state(started.id, Cancelling(), force=True))
    while True:
        ended = on_server(prefect_server, lambda client: client.read_flow_run(started.id))
        if ended.state is not None and ended.state.is_final():
            break
        assert time.monotonic() < deadline, tail(worker)
        time.sleep(0.5)

    assert ended.state.is_cancelled(), f"{ended.state.name}: {ended.state.message}\n{tail(worker)}"
    (summary,) = run_summaries(dest)
    assert summary["flow_run_id"] == str(started.id)
    assert "interrupted by SIGTERM" in summary["stop_reason"]
    assert summary["counts"].get("skipped"), summary["counts"]
    assert not list((dest / ".hy3d" / "claims").glob("*"))
    # Every submit sent has its prediction id in the ledger: a re-run (tests/test_signals.py) resumes
    # them without paying again.
    ledger = [json.loads(path.read_text()) for path in (dest / ".hy3d" / "predictions").glob("*.json")]
    assert len(ledger) == emulator.stats.submits_accepted == emulator.stats.submits_received
    assert all(entry["state"] == "submitted" for entry in ledger), ledger
