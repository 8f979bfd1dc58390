"""End to end: manifests in, meshes + metadata out, through the real client and the emulator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import trimesh

from emulator import EmulatorServer
from tasks.errors import AuthenticationError
from tests.conftest import run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

NAMES = ["red-ball.png", "blue-mug.png", "gold-star.png", "green-pyramid.jpg"]


def write_csv(folder: Path, rows: list[tuple[str, str]]) -> Path:
    manifest = folder / "manifest.csv"
    manifest.write_text("id,image\n" + "".join(f"{i},{image}\n" for i, image in rows))
    return manifest


def distinct_images(folder: Path, count: int) -> list[tuple[str, str]]:
    """Manifest rows ``item-N`` of ``count`` different images (one byte appended after the PNG end
    is still a PNG): each is its own submit."""
    data = (folder / "red-ball.png").read_bytes()
    rows = []
    for index in range(count):
        (folder / f"copy-{index}.png").write_bytes(data + bytes([index]))
        rows.append((f"item-{index}", f"copy-{index}.png"))
    return rows


def assert_landed(output: Path, item_id: str) -> dict:
    """The mesh exists, loads in trimesh with faces, and its metadata describes it."""
    mesh_path = output / item_id / "mesh.glb"
    metadata = json.loads((output / item_id / "metadata.json").read_text())
    assert metadata["status"] == "completed", metadata
    scene = trimesh.load(mesh_path, file_type="glb", force="scene")
    faces = sum(len(g.faces) for g in scene.geometry.values())
    assert faces > 0
    assert metadata["mesh"]["faces"] == faces
    assert metadata["output"]["bytes"] == mesh_path.stat().st_size
    assert len(metadata["prediction"]["id"]) == 32
    return metadata


def test_csv_manifest_of_local_files_lands_every_mesh(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = write_csv(samples, [(Path(n).stem, n) for n in NAMES])
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert (summary.total, summary.landed, summary.failed) == (4, 4, 0)
    faces = set()
    for name in NAMES:
        metadata = assert_landed(output, Path(name).stem)
        source = samples / name
        assert metadata["source"]["image"] == str(source)
        assert metadata["image"]["sha256"] == __import__("hashlib").sha256(source.read_bytes()).hexdigest()
        assert metadata["model"] == "wavespeed-ai/hunyuan3d/v2-mini"
        assert metadata["inputs"]["image"].startswith(emulator.url)  # uploaded, then passed by URL
        assert metadata["timings"]["wavespeed_inference_ms"] is not None
        assert len(metadata["mesh"]["bounds"]) == 2
        faces.add(metadata["mesh"]["faces"])
    assert len(faces) > 1, "meshes are derived from the images, so they differ"
    stats = emulator.stats
    assert stats.submits_accepted == 4
    assert stats.total_uploads == 4
    for name in NAMES:
        assert stats.submits_for_image_bytes((samples / name).read_bytes()) == 1
    runs = list((output / "runs").glob("*.json"))
    assert len(runs) == 1
    assert json.loads(runs[0].read_text())["landed"] == 4
    # No staging files are left behind.
    assert not list(output.rglob("*.partial"))


@pytest.mark.parametrize("kind", ["jsonl", "txt", "directory", "glob"])
def test_other_manifest_formats(kind: str, emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    chosen = NAMES[:2]
    for extra in NAMES[2:]:
        (samples / extra).unlink()
    if kind == "jsonl":
        source = samples / "manifest.jsonl"
        source.write_text("".join(json.dumps({"image": n}) + "\n" for n in chosen))
    elif kind == "txt":
        source = samples / "images.txt"
        source.write_text("# sample images\n\n" + "".join(f"{n}\n" for n in chosen))
    elif kind == "directory":
        source = samples
    else:
        source = samples / "*.png"
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(source), output=str(output))

    assert state.is_completed(), state.message
    assert summary.landed == 2
    for name in chosen:
        assert_landed(output, Path(name).stem)  # ids default to the file stem
    assert emulator.stats.submits_accepted == 2


def test_urls_are_passed_through_not_uploaded(
    emulator: EmulatorServer, image_server: str, samples: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text(f"{image_server}/red-ball.png\n{image_server}/blue-mug.png\n")
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert summary.landed == 2
    metadata = assert_landed(output, "red-ball")
    assert metadata["inputs"]["image"] == f"{image_server}/red-ball.png"
    assert emulator.stats.total_uploads == 0
    assert emulator.stats.submits_for_url(f"{image_server}/red-ball.png") == 1


def test_rerun_submits_nothing_new(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = write_csv(samples, [("a", "red-ball.png"), ("b", "blue-mug.png")])
    output = tmp_path / "out"
    run_flow(manifest=str(manifest), output=str(output))
    first = json.loads((output / "a" / "metadata.json").read_text())
    submits, uploads, polls = (
        emulator.stats.submits_received,
        emulator.stats.total_uploads,
        emulator.stats.total_polls,
    )
    assert submits == 2

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert summary.counts == {"already_done": 2}
    assert emulator.stats.submits_received == submits
    assert emulator.stats.total_uploads == uploads
    assert emulator.stats.total_polls == polls
    assert json.loads((output / "a" / "metadata.json").read_text()) == first


def test_rerun_into_new_output_reuses_paid_predictions(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """The submit cache is keyed by content: a new destination polls and downloads again, pays nothing."""
    manifest = write_csv(samples, [("a", "red-ball.png")])
    run_flow(manifest=str(manifest), output=str(tmp_path / "first"))
    assert emulator.stats.submits_received == 1
    downloads = emulator.stats.total_downloads

    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "second"))

    assert state.is_completed(), state.message
    assert emulator.stats.submits_received == 1
    assert emulator.stats.total_uploads == 1
    assert emulator.stats.total_downloads == downloads + 1
    metadata = assert_landed(tmp_path / "second", "a")
    assert metadata["prediction"]["reused"] is True


def test_one_image_under_two_ids_is_paid_once(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    (samples / "copy.png").write_bytes((samples / "red-ball.png").read_bytes())
    manifest = write_csv(
        samples, [("first", "red-ball.png"), ("second", "copy.png"), ("mug", "blue-mug.png")]
    )
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output), concurrency=3)

    assert state.is_completed(), state.message
    assert summary.landed == 3
    first, second = assert_landed(output, "first"), assert_landed(output, "second")
    assert first["prediction"]["id"] == second["prediction"]["id"]
    assert emulator.stats.submits_for_image_bytes((samples / "red-ball.png").read_bytes()) == 1
    assert emulator.stats.submits_accepted == 2


def test_wrong_key_stops_the_run_before_any_work(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", "wsk-wrong-key")
    manifest = write_csv(samples, [(Path(n).stem, n) for n in NAMES])
    output = tmp_path / "out"

    state, error = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    assert isinstance(error, AuthenticationError)
    assert "rejected the API key" in str(error) and "WAVESPEED_API_KEY" in str(error)
    assert "wsk-wrong-key" not in str(error) + (state.message or "")
    # One request answered 401, then nothing more: no retries, no uploads, no submits.
    assert sum(emulator.stats.requests.values()) == 1
    assert emulator.stats.auth_failures == 1
    assert not list(output.glob("*/mesh.glb"))


def test_key_revoked_mid_run_stops_new_submits(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """The key passes the up-front check, then is revoked after the first prediction completes.
    One prediction in flight (no queue headroom), so that exactly one request meets the new key."""
    emulator.config.latency_s = 0.5

    def revoke_after_first_completion() -> None:
        deadline = time.monotonic() + 30
        while emulator.stats.completed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.config.api_key = "wsk-rotated"

    revoker = threading.Thread(target=revoke_after_first_completion, daemon=True)
    revoker.start()
    manifest = write_csv(samples, [(Path(n).stem, n) for n in NAMES])

    state, summary = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), concurrency=1, queue_headroom=0
    )
    revoker.join(5)

    assert state.is_failed()
    assert "rejected the API key" in (summary.stop_reason or "")
    assert summary.counts.get("skipped", 0) >= 2
    assert summary.counts.get("error") == 1
    assert emulator.stats.auth_failures == 1  # the first 401 stopped everything
    assert emulator.stats.submits_accepted == 1


def test_failed_prediction_is_recorded_while_others_land(
    emulator: EmulatorServer, missing_image_url: str, samples: Path, tmp_path: Path
) -> None:
    """An input URL WaveSpeed cannot download fails the task with data.code 1402. With the URL check
    off (for URLs only WaveSpeed can reach) a URL answering 404 here is submitted all the same."""
    manifest = samples / "mixed.csv"
    manifest.write_text(f"id,image\nball,red-ball.png\nbroken,{missing_image_url}\nmug,blue-mug.png\n")
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    assert (summary.landed, summary.failed) == (2, 1)
    assert_landed(output, "ball")
    assert_landed(output, "mug")
    broken = json.loads((output / "broken" / "metadata.json").read_text())
    assert broken["status"] == "failed"
    assert broken["prediction"]["code"] == 1402
    assert broken["error"]["code"] == 1402
    assert broken["error"]["message"]
    assert not (output / "broken" / "mesh.glb").exists()
    outcome = next(item for item in summary.items if item.id == "broken")
    assert outcome.error_code == 1402
    assert emulator.stats.submits_for_url(missing_image_url) == 1  # not checked: paid


def test_bad_rows_are_reported_and_the_rest_land(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    (samples / "notes.png").write_bytes(b"this is not an image")
    manifest = samples / "manifest.csv"
    manifest.write_text("id,image\nball,red-ball.png\nghost,missing.png\nfake,notes.png\nball,blue-mug.png\n")
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    assert summary.landed == 1
    errors = {item.row: item.error for item in summary.items if item.status == "invalid"}
    assert set(errors) == {3, 4, 5}
    assert "row 3" in errors[3] and "'image'" in errors[3] and "does not exist" in errors[3]
    assert "row 4" in errors[4] and "not a readable image" in errors[4]
    assert "row 5" in errors[5] and "'id'" in errors[5]
    assert emulator.stats.submits_accepted == 1  # nothing paid for the bad rows


def test_missing_api_key_stops_before_any_request(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WAVESPEED_API_KEY")
    manifest = write_csv(samples, [("a", "red-ball.png")])

    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "out"))

    assert state.is_failed()
    assert "WAVESPEED_API_KEY" in state.message
    assert sum(emulator.stats.requests.values()) == 0


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_manifest_images_and_output_on_fsspec_urls(
    scheme: str, emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    import uuid

    import fsspec

    root = f"memory://hy3d-test-{uuid.uuid4().hex}" if scheme == "memory" else f"file://{tmp_path}/store"
    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(f"{base}/in", exist_ok=True)
    for name in NAMES[:2]:
        fs.pipe_file(f"{base}/in/{name}", (samples / name).read_bytes())
    fs.pipe_file(
        f"{base}/in/manifest.csv",
        b"id,image\n" + b"".join(f"{Path(n).stem},{n}\n".encode() for n in NAMES[:2]),
    )

    state, summary = run_flow(manifest=f"{root}/in/manifest.csv", output=f"{root}/out")

    assert state.is_completed(), state.message
    assert summary.landed == 2
    for name in NAMES[:2]:
        item = Path(name).stem
        metadata = json.loads(fs.cat_file(f"{base}/out/{item}/metadata.json"))
        assert metadata["status"] == "completed"
        mesh = fs.cat_file(f"{base}/out/{item}/mesh.glb")
        assert mesh[:4] == b"glTF" and len(mesh) == metadata["output"]["bytes"]
    assert len(fs.glob(f"{base}/out/runs/*.json")) == 1
    assert fs.glob(f"{base}/out/**/*.partial") == []
    assert emulator.stats.submits_accepted == 2


@pytest.mark.parametrize(("queue_headroom", "in_flight"), [(None, 3), (0, 2), (2, 4)])
def test_concurrency_and_queue_headroom_cap_predictions_in_flight(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, queue_headroom: int | None, in_flight: int
) -> None:
    """`concurrency` is the account's slots (what WaveSpeed's tiers limit) and `queue_headroom` the
    predictions queued behind them (default: half of `concurrency`, rounded up): together they cap
    predictions accepted and not yet terminal. Downloads and publishing happen outside the slots,
    and must not let more predictions in. The account's 2 slots are what the emulator processes at
    once; the headroom keeps them full."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 0.3, 0.0, 2
    manifest = write_csv(samples, distinct_images(samples, 8))

    state, _ = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), concurrency=2, queue_headroom=queue_headroom
    )

    assert state.is_completed(), state.message
    stats = emulator.stats.snapshot()
    assert stats["peak_in_flight"] == in_flight, stats
    assert stats["peak_processing"] == 2, stats
    assert stats["submits_accepted"] == 8
