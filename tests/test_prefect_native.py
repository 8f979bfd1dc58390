"""Prefect-native operation: artifacts, shared limits, cache records on a filesystem block."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest

from emulator import EmulatorServer
from tasks.submit import SubmitRateLimiter
from tests.conftest import run_flow
from tests.test_flow import NAMES, assert_landed, write_csv


def test_rate_limiter_allows_n_per_sliding_minute() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def go() -> list[float]:
        limiter = SubmitRateLimiter(2, clock=lambda: now[0], sleep=fake_sleep)
        times = []
        for _ in range(5):
            await limiter.acquire()
            times.append(now[0])
            now[0] += 1.0  # a submit takes a second
        return times

    times = asyncio.run(go())
    assert times == [0.0, 1.0, 60.0, 61.0, 120.0]
    for index in range(2, len(times)):
        assert times[index] - times[index - 2] >= 60.0


async def _artifacts(flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
    return {artifact.key: artifact for artifact in artifacts if artifact.key}


@pytest.mark.usefixtures("prefect_harness")
def test_every_run_publishes_progress_table_and_summary(
    emulator: EmulatorServer, missing_image_url: str, samples: Path, tmp_path: Path
) -> None:
    manifest = samples / "manifest.csv"  # the missing image fails on WaveSpeed (1402)
    manifest.write_text(f"id,image\nball,red-ball.png\nmug,blue-mug.png\nbroken,{missing_image_url}\n")

    state, summary = run_flow(manifest=str(manifest), output=str(tmp_path / "out"))

    assert state.is_failed()
    artifacts = asyncio.run(_artifacts(summary.flow_run_id))
    assert {"hy3d-progress", "hy3d-items", "hy3d-summary"} <= set(artifacts)
    assert float(artifacts["hy3d-progress"].data) == 100.0  # type: ignore[attr-defined]
    table = artifacts["hy3d-items"].data  # type: ignore[attr-defined]
    assert "broken" in table and "1402" in table and "ball" in table
    markdown = artifacts["hy3d-summary"].data  # type: ignore[attr-defined]
    assert "2/3 landed" in markdown
    assert "--retry-failed" in markdown


@pytest.mark.usefixtures("prefect_harness")
def test_global_concurrency_limit_caps_predictions_in_flight(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"hy3d-cap-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))

    asyncio.run(create())
    emulator.config.latency_s, emulator.config.max_concurrency = 0.4, 10
    manifest = write_csv(samples, [(Path(n).stem, n) for n in NAMES])

    state, summary = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), concurrency=4, concurrency_limit_name=name
    )

    assert state.is_completed(), state.message
    assert summary.landed == 4
    assert emulator.stats.peak_in_flight == 1  # the shared limit, not the run's concurrency of 4


@pytest.mark.usefixtures("prefect_harness")
def test_missing_global_limit_is_created_with_the_runs_predictions_in_flight(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    name = f"hy3d-new-{uuid.uuid4().hex[:8]}"
    manifest = write_csv(samples, [("ball", "red-ball.png")])
    state, _ = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), concurrency=3, concurrency_limit_name=name
    )
    assert state.is_completed(), state.message

    async def read() -> int:
        async with get_client() as client:
            return (await client.read_global_concurrency_limit_by_name(name)).limit

    assert asyncio.run(read()) == 3 + 2  # concurrency + the default queue headroom (half, rounded up)


@pytest.mark.usefixtures("prefect_harness")
def test_cache_records_on_a_filesystem_block_are_shared(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, prefect_harness: Path
) -> None:
    import fsspec
    from prefect.filesystems import RemoteFileSystem

    block_name = f"hy3d-cache-{uuid.uuid4().hex[:8]}"
    # Any fsspec URL works (s3://…, gs://…); memory:// keeps the test in this process.
    RemoteFileSystem(basepath=f"memory://{block_name}").save(block_name)
    memory = fsspec.filesystem("memory")
    manifest = write_csv(samples, [("ball", "red-ball.png")])
    block = f"remote-file-system/{block_name}"

    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "a"), cache_storage_block=block)
    assert state.is_completed(), state.message
    assert [p for p in memory.ls(f"/{block_name}", detail=False) if "hy3d-submit-" in p]

    # Another "host": its own local result store is empty, and a different output has no ledger.
    shutil.rmtree(prefect_harness)
    prefect_harness.mkdir()
    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "b"), cache_storage_block=block)

    assert state.is_completed(), state.message
    assert assert_landed(tmp_path / "b", "ball")["prediction"]["reused"] is True
    assert emulator.stats.submits_received == 1


@pytest.mark.usefixtures("prefect_harness")
def test_unknown_cache_block_is_a_configuration_error(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = write_csv(samples, [("ball", "red-ball.png")])
    state, error = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), cache_storage_block="remote-file-system/nope"
    )
    assert state.is_failed()
    assert "nope" in str(error)
    assert emulator.stats.submits_received == 0


@pytest.mark.usefixtures("prefect_harness")
def test_flow_takes_its_key_from_a_credentials_block(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.credentials import WaveSpeedCredentials

    name = f"hy3d-creds-{uuid.uuid4().hex[:8]}"
    WaveSpeedCredentials(api_key=emulator.api_key, base_url=emulator.url).save(name)
    monkeypatch.delenv("WAVESPEED_API_KEY")
    monkeypatch.setenv("WAVESPEED_BASE_URL", "http://127.0.0.1:9")  # the block's URL must win
    manifest = write_csv(samples, [("ball", "red-ball.png")])

    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), credentials_block=name)

    assert state.is_completed(), state.message
    assert_landed(tmp_path / "out", "ball")
    assert emulator.stats.submits_accepted == 1
