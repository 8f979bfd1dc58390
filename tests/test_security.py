"""The API key never appears in anything the product writes, logs or raises."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from emulator import EmulatorServer
from tasks.client import WaveSpeedClient, WaveSpeedSettings
from tasks.errors import AuthenticationError, UnsafePathError
from tasks.storage import Storage
from tests.conftest import run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

CANARY = "wsk-CANARY-7f3a9c2e51d04b6e"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_full_run_never_writes_or_logs_the_key(
    emulator: EmulatorServer,
    image_server: str,
    samples: Path,
    tmp_path: Path,
    prefect_harness: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.config.api_key = CANARY
    monkeypatch.setenv("WAVESPEED_API_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    manifest = samples / "manifest.csv"
    manifest.write_text(
        "id,image\nball,red-ball.png\nbroken,"
        f"{image_server}/missing.png\nghost,nothere.png\nmug,blue-mug.png\n"
    )
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert (summary.landed, summary.failed) == (2, 2)  # successes and failures both wrote records
    assert (output / "ball" / "mesh.glb").exists()
    needle = CANARY.encode()
    assert _files_containing(output, needle) == []
    assert _files_containing(prefect_harness, needle) == []  # Prefect results and cache records
    captured = capfd.readouterr()
    assert CANARY not in captured.out + captured.err
    assert CANARY not in caplog.text
    assert CANARY not in (state.message or "") + summary.model_dump_json()
    logs = asyncio.run(_flow_run_logs(summary.flow_run_id))
    assert logs, "the flow run's logs are stored on the Prefect server"
    assert CANARY not in "\n".join(logs)


async def _flow_run_logs(flow_run_id: str | None) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    assert flow_run_id
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        return [log.message for log in logs] + [str(flow_run.parameters)]


def test_rejected_key_is_not_echoed_in_errors(emulator: EmulatorServer) -> None:
    async def go() -> None:
        async with WaveSpeedClient(WaveSpeedSettings(api_key=CANARY, base_url=emulator.url)) as client:
            assert CANARY not in repr(client)
            with pytest.raises(AuthenticationError) as raised:
                await client.get_prediction("0" * 32)
            assert CANARY not in str(raised.value) + repr(raised.value)

    asyncio.run(go())


def test_storage_never_addresses_outside_its_root(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "dest"), {"secret": CANARY})
    assert CANARY not in repr(storage)
    for unsafe in ("..", "../x", "a/../../b", "c:\\\\x", "nul\x00", ""):
        with pytest.raises(UnsafePathError):
            storage.path(unsafe, "mesh.glb")
