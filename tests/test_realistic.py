"""First contact with the real service: the flow, end to end, against the emulator's realistic
profile (the shapes WaveSpeed and its public clients show beyond the documented contract)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import trimesh

from emulator import EmulatorConfig, EmulatorServer
from tests.conftest import client_env, run_flow, unused_url_emulator
from tests.test_flow import NAMES, assert_landed, write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def realistic(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    emulator.config.profile = "realistic"
    monkeypatch.setenv("WAVESPEED_UPLOAD_METHOD", "presigned")
    return emulator


def _items(samples: Path) -> Path:
    return write_csv(samples, [(Path(name).stem, name) for name in NAMES])


def test_every_realistic_shape_lands_verified_and_paid_once(
    realistic: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """Nulls before completion, `timings: null` when completed, the mesh as an object at a signed URL
    without extension served as octet-stream, the preview listed first, statuses the contract does
    not list, and presigned uploads with only `If-None-Match: *`."""
    realistic.config.unlisted_status_rate = 0.5
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(_items(samples)), output=str(output))

    assert state.is_completed(), state.message
    assert summary.counts == {"completed": 4}
    for name in NAMES:
        metadata = assert_landed(output, Path(name).stem)
        assert "." not in metadata["output"]["source_url"].split("?")[0].rsplit("/", 1)[-1]
        assert metadata["output"]["converted_from"] is None
        assert [extra["kind"] for extra in metadata["output"]["other_files"]] == ["png"]
        assert metadata["prediction"]["output_objects"][0]["format"] == "glb"
        assert metadata["timings"]["wavespeed_execution_ms"] is not None
    stats = realistic.stats
    assert (stats.submits_accepted, stats.total_uploads) == (4, 4)
    # The emulator did answer in those shapes: a finished prediction, polled raw.
    prediction_id = json.loads((output / "red-ball" / "metadata.json").read_text())["prediction"]["id"]
    raw = httpx.get(
        f"{realistic.url}/api/v3/predictions/{prediction_id}/result",
        headers={"Authorization": f"Bearer {realistic.api_key}"},
    ).json()["data"]
    assert raw["timings"] is None and isinstance(raw["outputs"][1], dict)
    assert raw["outputs"][0].split("?")[0].endswith("/cdn/o/" + raw["outputs"][0].split("/cdn/o/")[1][:32])


@pytest.mark.parametrize(
    ("model", "switches", "original"),
    [
        ("wavespeed-ai/hunyuan3d-v3/image-to-3d", {}, "original.zip"),
        ("wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid", {}, "original.zip"),
        ("wavespeed-ai/hunyuan3d/v2-mini", {"v2_obj_output": True}, "original.obj"),
    ],
)
def test_obj_meshes_become_verified_glbs_with_the_original_kept(
    realistic: EmulatorServer,
    samples: Path,
    tmp_path: Path,
    model: str,
    switches: dict[str, bool],
    original: str,
) -> None:
    for name, value in switches.items():
        setattr(realistic.config, name, value)
    manifest = write_csv(samples, [("ball", "red-ball.png")])
    output = tmp_path / "out"

    state, _ = run_flow(manifest=str(manifest), output=str(output), model=model)

    assert state.is_completed(), state.message
    metadata = assert_landed(output, "ball")
    assert metadata["output"]["converted_from"] == original.split(".")[1]
    assert metadata["output"]["original"]["path"] == original
    assert (output / "ball" / original).stat().st_size == metadata["output"]["original"]["bytes"]
    geometry = next(iter(trimesh.load(output / "ball" / "mesh.glb", force="scene").geometry.values()))
    if original == "original.zip":  # the zip carries its texture, and the GLB keeps it
        assert geometry.visual.material.baseColorTexture is not None
    assert realistic.stats.submits_accepted == 1


def test_a_completed_answer_with_null_timings_lands_on_the_first_run(
    realistic: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = write_csv(samples, [("ball", "red-ball.png")])
    _, summary = run_flow(manifest=str(manifest), output=str(tmp_path / "out"))
    assert summary.counts == {"completed": 1}, summary.items
    _, again = run_flow(manifest=str(manifest), output=str(tmp_path / "out"))
    assert again.counts == {"already_done": 1}
    assert realistic.stats.submits_accepted == 1


def test_cancelled_and_timed_out_predictions_fail_and_are_counted_as_refunds(
    realistic: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    realistic.config.cancel_rate = 0.5
    realistic.config.timeout_rate = 1.0  # what is not cancelled times out
    _, summary = run_flow(manifest=str(_items(samples)), output=str(tmp_path / "out"))
    assert summary.counts == {"failed": 4}
    assert {item.error for item in summary.items} <= {"Prediction cancelled", "Task timed out"}
    # Billed at the discounted price the price endpoint gives (0.02 less 10 %), all of it refunded.
    assert summary.cost_usd == pytest.approx(4 * 0.018)
    assert summary.refund_usd == pytest.approx(4 * 0.018)
    assert realistic.stats.submits_accepted == 4


def test_expired_output_urls_are_renewed_by_a_new_poll(
    realistic: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """The CDN's 403 "Request has expired" is the item's problem, not a rejected API key."""
    realistic.config.download_403_rate = 1.0
    state, summary = run_flow(manifest=str(_items(samples)), output=str(tmp_path / "out"))
    assert state.is_completed(), state.message
    assert summary.counts == {"completed": 4}
    assert summary.stop_reason is None
    assert realistic.stats.submits_accepted == 4


def test_meshes_in_the_output_are_done_whatever_the_api_root(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo run twice (a new emulator port each time, or a proxy in front of the API) pays 0."""
    manifest, output = _items(samples), tmp_path / "out"
    _, summary = run_flow(manifest=str(manifest), output=str(output))
    assert summary.counts == {"completed": 4}
    meshes = {path: path.stat().st_mtime_ns for path in output.glob("*/mesh.glb")}

    with unused_url_emulator(EmulatorConfig(latency_s=0.2, jitter_s=0.05)) as other:
        for name, value in client_env(other).items():
            monkeypatch.setenv(name, value)
        _, again = run_flow(manifest=str(manifest), output=str(output))
        assert again.counts == {"already_done": 4}
        assert other.stats.submits_accepted == 0 and other.stats.total_uploads == 0
    assert {path: path.stat().st_mtime_ns for path in output.glob("*/mesh.glb")} == meshes


def test_a_prediction_is_only_polled_on_the_root_that_made_it(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid prediction whose mesh is not in the output yet (the run was killed) and whose API root
    changed: not polled elsewhere, not paid again unless asked."""
    manifest, output = write_csv(samples, [("ball", "red-ball.png")]), tmp_path / "out"
    run_flow(manifest=str(manifest), output=str(output))
    (output / "ball" / "mesh.glb").unlink()
    (output / "ball" / "metadata.json").unlink()

    with unused_url_emulator(EmulatorConfig(latency_s=0.2, jitter_s=0.05)) as other:
        for name, value in client_env(other).items():
            monkeypatch.setenv(name, value)
        _, summary = run_flow(manifest=str(manifest), output=str(output))
        assert summary.counts == {"submit_unknown": 1}
        assert emulator.url in summary.items[0].error and "WAVESPEED_BASE_URL" in summary.items[0].error
        assert other.stats.submits_accepted == 0 and other.stats.total_polls == 0
        _, summary = run_flow(manifest=str(manifest), output=str(output), resubmit_unknown=True)
        assert summary.counts == {"completed": 1}
        assert other.stats.submits_accepted == 1


def test_an_echoed_key_is_in_no_byte_the_run_produces(
    realistic: EmulatorServer, samples: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    realistic.config.echo_api_key_in_errors = True
    realistic.config.failure_rate = 1.0
    output = tmp_path / "out"
    _, summary = run_flow(manifest=str(_items(samples)), output=str(output))
    assert summary.counts == {"failed": 4}
    assert "Authorization: Bearer ***" in summary.items[0].error
    key = realistic.api_key.encode()
    files = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "metadata.json" for path in files) and any(
        path.name == "index.html" for path in files
    )
    assert [path for path in files if key in path.read_bytes()] == []
    captured = capfd.readouterr()
    assert realistic.api_key not in captured.out + captured.err
    assert os.environ["WAVESPEED_API_KEY"] == realistic.api_key
