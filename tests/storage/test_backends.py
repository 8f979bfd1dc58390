"""The storage contract, one test per guarantee, run against every backend (see conftest.py): local
paths, ``file://``, ``memory://``, ``s3://`` (moto), ``gs://`` (gcp-storage-emulator), ``az://`` (azurite).

Each test asserts on what is in the storage afterwards (read back through a client of the test's own)
and on the WaveSpeed emulator's counts. Deployments take ``storage_options`` as the same flow
parameter the flow tests pass here, so the flow-parameter tests cover them too.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest
import trimesh

from emulator import EmulatorServer
from flows.manifest import load_manifest
from hy3d.cli import main as cli_main
from tasks.storage import STATE_FOLDER, ClaimRegistry
from tests.conftest import run_flow
from tests.storage.conftest import Backend

IMAGES = ["red-ball.png", "blue-mug.png"]


def stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def put_inputs(backend: Backend, samples: Path, names: list[str] = IMAGES, extra_rows: str = "") -> str:
    """Images and a CSV manifest (image paths relative to it) on the backend; returns the manifest URL."""
    for name in names:
        backend.write(f"in/{name}", (samples / name).read_bytes())
    rows = "".join(f"{stem(name)},{name}\n" for name in names)
    backend.write("in/manifest.csv", f"id,image\n{rows}{extra_rows}".encode())
    return backend.url("in", "manifest.csv")


def run(backend: Backend, manifest: str, **parameters: Any) -> tuple[Any, Any]:
    return run_flow(
        manifest=manifest, output=backend.url("out"), storage_options=backend.options, **parameters
    )


def run_to_completion(backend: Backend, manifest: str, **parameters: Any) -> Any:
    """:func:`run`, which must complete: its summary."""
    state, summary = run(backend, manifest, **parameters)
    assert state.is_completed(), state.message
    return summary


def assert_mesh_landed(backend: Backend, item_id: str) -> dict[str, Any]:
    """``out/<id>/mesh.glb`` on the backend is a whole, verified GLB described by its metadata."""
    metadata: dict[str, Any] = json.loads(backend.read(f"out/{item_id}/metadata.json"))
    assert metadata["status"] == "completed", metadata
    mesh = backend.read(f"out/{item_id}/mesh.glb")
    assert mesh[:4] == b"glTF"
    assert struct.unpack("<I", mesh[8:12])[0] == len(mesh)  # the GLB header's declared length
    assert len(mesh) == metadata["output"]["bytes"]
    assert hashlib.sha256(mesh).hexdigest() == metadata["output"]["sha256"]
    scene: Any = trimesh.load(io.BytesIO(mesh), file_type="glb", force="scene")
    faces = sum(len(geometry.faces) for geometry in scene.geometry.values())
    assert faces > 0
    assert metadata["mesh"]["faces"] == faces
    assert metadata["output"]["url"] == backend.url("out", item_id, "mesh.glb")
    return metadata


def ledger(backend: Backend) -> list[dict[str, Any]]:
    paths = [p for p in backend.files(f"out/{STATE_FOLDER}/predictions") if p.endswith(".json")]
    return [json.loads(backend.read(path)) for path in paths]


def partials(backend: Backend) -> list[str]:
    return [path for path in backend.files() if path.endswith(".partial")]


def staged_locally(temp: Path) -> list[str]:
    """Staging files (``hy3d-*.partial``) left in the process's temp folder."""
    return [path.name for path in temp.rglob("hy3d-*")]


def forget_prefect_cache(prefect_harness: Path) -> None:
    """Drop Prefect's submit cache, so that what follows rests on the output's own ledger alone."""
    shutil.rmtree(prefect_harness)
    prefect_harness.mkdir()


# -- reading ----------------------------------------------------------------------------------------------


def test_manifest_is_read_from_the_backend(backend: Backend, samples: Path) -> None:
    names = [*IMAGES, "green-pyramid.jpg"]
    csv_url = put_inputs(backend, samples, names, extra_rows="ghost,missing.png\n")
    backend.write("in/manifest.jsonl", b"".join(json.dumps({"image": n}).encode() + b"\n" for n in names))
    backend.write("in/images.txt", b"# on the backend\n" + "".join(f"{n}\n" for n in names).encode())

    sources = {
        "csv": csv_url,
        "jsonl": backend.url("in", "manifest.jsonl"),
        "txt": backend.url("in", "images.txt"),
        "directory": backend.url("in"),
        "glob": backend.url("in", "*.png"),
    }
    for kind, source in sources.items():
        manifest = load_manifest(source, backend.options)
        assert manifest.format == kind
        expected = [n for n in names if kind != "glob" or n.endswith(".png")]
        assert sorted(item.id for item in manifest.items) == sorted(stem(n) for n in expected), kind
        for item in manifest.items:
            assert not item.is_url
            name = item.image.rsplit("/", 1)[-1]
            assert item.image.endswith(f"/in/{name}")
            # The resolved image is the file on the backend: opened with the options, it has its bytes.
            with fsspec.open(item.image, "rb", **backend.options) as handle:
                assert handle.read() == (samples / name).read_bytes()
    # Existence is checked on the backend too.
    (problem,) = load_manifest(csv_url, backend.options).errors
    assert problem.field == "image" and "does not exist" in problem.message


@pytest.mark.usefixtures("prefect_harness")
def test_images_are_read_from_the_backend_and_uploaded(
    backend: Backend, emulator: EmulatorServer, samples: Path
) -> None:
    manifest = put_inputs(backend, samples)

    summary = run_to_completion(backend, manifest)

    assert summary.landed == 2
    assert emulator.stats.total_uploads == 2
    for name in IMAGES:
        data = (samples / name).read_bytes()
        assert emulator.stats.submits_for_image_bytes(data) == 1
        metadata = json.loads(backend.read(f"out/{stem(name)}/metadata.json"))
        assert metadata["source"]["image"].endswith(f"/in/{name}")
        assert metadata["image"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert metadata["inputs"]["image"].startswith(emulator.url)  # uploaded, then passed by URL


@pytest.mark.parametrize("backend", ["s3", "gcs", "azure"], indirect=True)
@pytest.mark.usefixtures("prefect_harness")
def test_local_inputs_go_to_the_backend_with_its_options(
    backend: Backend, emulator: EmulatorServer, samples: Path
) -> None:
    """The README's first example: a local manifest and images, the output on an object store, one set
    of storage options for all (local files ignore them). Local outputs: tests/test_flow.py."""
    manifest = samples / "manifest.csv"
    manifest.write_text(f"id,image\n{stem(IMAGES[0])},{IMAGES[0]}\n")

    run_to_completion(backend, str(manifest))

    metadata = assert_mesh_landed(backend, stem(IMAGES[0]))
    assert metadata["source"]["image"] == str(samples / IMAGES[0])
    assert emulator.stats.total_uploads == 1


# -- writing ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_meshes_and_metadata_are_written_to_the_backend(
    backend: Backend, emulator: EmulatorServer, samples: Path, local_temp: Path
) -> None:
    manifest = put_inputs(backend, samples)

    summary = run_to_completion(backend, manifest)

    for name in IMAGES:
        metadata = assert_mesh_landed(backend, stem(name))
        item = next(i for i in summary.items if i.id == stem(name))
        assert item.mesh == backend.url("out", stem(name), "mesh.glb")
        assert metadata["prediction"]["id"] == item.prediction_id
    (summary_path,) = [p for p in backend.files("out/runs")]
    assert json.loads(backend.read(summary_path))["landed"] == 2
    assert summary.summary_url == backend.url(summary_path)
    # Nothing of the run's own machinery is left: no claim, no staging file, no write probe.
    keys = {entry["content_key"] for entry in ledger(backend)}
    assert len(keys) == 2
    written = backend.files("out")
    assert [p for p in written if p.startswith(f"out/{STATE_FOLDER}/")] == sorted(
        f"out/{STATE_FOLDER}/predictions/{key}.json" for key in keys
    )
    assert [p for p in written if p.endswith(".partial") or "write-probe" in p] == []
    assert staged_locally(local_temp) == []  # object stores stage in the temp folder: all cleaned up


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_download_never_leaves_a_mesh_or_a_partial_object(
    backend: Backend,
    emulator: EmulatorServer,
    samples: Path,
    local_temp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.config.download_truncate_rate = 1.0  # every download stops halfway
    monkeypatch.setenv("WAVESPEED_REQUEST_ATTEMPTS", "2")
    manifest = put_inputs(backend, samples, IMAGES[:1])
    item_id = stem(IMAGES[0])

    state, summary = run(backend, manifest)

    assert state.is_failed()
    assert summary.counts == {"error": 1}
    assert emulator.stats.downloads_truncated == 2  # both attempts were cut short
    assert not backend.exists(f"out/{item_id}/mesh.glb")
    assert f"out/{item_id}/mesh.glb" not in backend.files("out")
    assert json.loads(backend.read(f"out/{item_id}/metadata.json"))["status"] == "error"
    assert partials(backend) == []
    assert staged_locally(local_temp) == []

    # The paid prediction is in the backend's ledger: the next run downloads it, pays nothing more.
    emulator.config.download_truncate_rate = 0.0
    run_to_completion(backend, manifest)

    assert assert_mesh_landed(backend, item_id)["prediction"]["reused"] is True
    assert emulator.stats.submits_received == 1
    assert partials(backend) == []


# -- never pay twice --------------------------------------------------------------------------------------


def test_ledger_lives_on_the_backend_and_reruns_pay_nothing(
    backend: Backend, emulator: EmulatorServer, samples: Path, prefect_harness: Path
) -> None:
    manifest = put_inputs(backend, samples)
    summary = run_to_completion(backend, manifest)
    entries = ledger(backend)
    assert sorted(e["prediction_id"] for e in entries) == sorted(i.prediction_id for i in summary.items)
    assert {e["state"] for e in entries} == {"submitted"}
    counts = (emulator.stats.submits_received, emulator.stats.total_uploads, emulator.stats.total_polls)
    assert counts[0] == 2

    summary = run_to_completion(backend, manifest)

    assert summary.counts == {"already_done": 2}
    assert (
        emulator.stats.submits_received,
        emulator.stats.total_uploads,
        emulator.stats.total_polls,
    ) == counts

    # A mesh lost from the output, and Prefect's cache gone: the backend's ledger alone still says
    # what was paid for, so the next run downloads it again instead of paying again.
    item_id = stem(IMAGES[0])
    backend.fs.rm_file(backend.path(f"out/{item_id}/mesh.glb"))
    forget_prefect_cache(prefect_harness)
    downloads = emulator.stats.total_downloads

    summary = run_to_completion(backend, manifest)

    assert summary.counts == {"completed": 1, "already_done": 1}
    assert assert_mesh_landed(backend, item_id)["prediction"]["reused"] is True
    assert emulator.stats.submits_received == 2
    assert emulator.stats.total_downloads == downloads + 1


def test_timeout_then_rerun_resumes_from_the_backend_ledger(
    backend: Backend, emulator: EmulatorServer, samples: Path, prefect_harness: Path
) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 1.5, 0.0
    manifest = put_inputs(backend, samples, IMAGES[:1])

    state, summary = run(backend, manifest, wait_timeout_s=0.3)

    assert state.is_failed()
    assert summary.counts == {"timeout": 1}
    (entry,) = ledger(backend)
    assert entry["state"] == "submitted"
    assert entry["prediction_id"] == summary.items[0].prediction_id
    assert not backend.exists(f"out/{stem(IMAGES[0])}/mesh.glb")
    forget_prefect_cache(prefect_harness)

    run_to_completion(backend, manifest)

    metadata = assert_mesh_landed(backend, stem(IMAGES[0]))
    assert metadata["prediction"]["id"] == entry["prediction_id"]
    assert metadata["prediction"]["reused"] is True
    assert emulator.stats.submits_received == 1


# -- claims -----------------------------------------------------------------------------------------------


def test_exclusive_create_is_exclusive_on_the_backend(backend: Backend) -> None:
    """``open(path, "xb")`` from two clients, both opened before either finishes: one object wins,
    the other gets FileExistsError, whether the store checks at open or at the final put."""
    first = backend.storage("x").fs
    second = backend.storage("x").fs
    path = backend.path("x", "claim.json")
    assert first is not second
    first.makedirs(backend.path("x"), exist_ok=True)  # as ClaimRegistry does (a no-op on object stores)

    winner = first.open(path, "xb")
    winner.write(b"first")
    try:
        loser = second.open(path, "xb")
    except FileExistsError:
        loser = None  # refused at open: the file exists from the moment it is opened
    winner.close()
    # Local files and memory:// refuse at open (O_EXCL; created on open); object stores at the final,
    # conditional put: If-None-Match (S3, Azure), ifGenerationMatch=0 (GCS).
    assert (loser is not None) == backend.is_object_store
    if loser is not None:
        loser.write(b"second")
        with pytest.raises(FileExistsError):
            loser.close()

    assert backend.read("x/claim.json") == b"first"
    with pytest.raises(FileExistsError), second.open(path, "xb") as again:
        again.write(b"third")
    assert backend.read("x/claim.json") == b"first"


def test_one_claim_per_content_across_clients(backend: Backend) -> None:
    first = ClaimRegistry(backend.storage("out"), run="run-a", lease_s=600)
    second = ClaimRegistry(backend.storage("out"), run="run-b", lease_s=600)

    assert first.try_claim("content") is None
    holder = second.try_claim("content")
    assert holder is not None and holder.run == "run-a"
    first.release_all()
    assert second.try_claim("content") is None

    # Many clients at once on fresh keys: exactly one gets each. Object stores decide on the server;
    # in-process stores get many rounds with threads switching as often as they can (on memory://
    # the window between "exists?" and "create" is a few bytecodes wide).
    rounds = 3 if backend.is_object_store else 20
    racers = [ClaimRegistry(backend.storage("out"), run=f"run-{n}", lease_s=600) for n in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(interval if backend.is_object_store else 1e-6)
    try:
        for key in (f"contended-{n}" for n in range(rounds)):
            results = race_for(racers, key)
            winners = [run for run, won in results.items() if won]
            assert len(results) == len(racers) and len(winners) == 1, (key, results)
            body = json.loads(backend.read(f"out/{STATE_FOLDER}/claims/{key}.json"))
            assert body["run"] == winners[0]
    finally:
        sys.setswitchinterval(interval)


def race_for(racers: list[ClaimRegistry], key: str) -> dict[str, bool]:
    """Every registry tries to claim ``key`` at the same moment; run -> whether it got it."""
    results: dict[str, bool] = {}
    start = threading.Barrier(len(racers))

    def race(registry: ClaimRegistry) -> None:
        start.wait()
        results[registry.me.run] = registry.try_claim(key) is None

    threads = [threading.Thread(target=race, args=(registry,)) for registry in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_dead_runs_claim_is_swept_and_taken_over_by_another_client(backend: Backend) -> None:
    """Claims are written by other clients: a client must see them even after it listed the claims
    folder (object-store clients cache listings) — or a dead run's claim would block it."""
    live = ClaimRegistry(backend.storage("out"), run="live", lease_s=600)
    assert live.try_claim("busy") is None
    survivor = ClaimRegistry(backend.storage("out"), run="survivor", lease_s=600)
    assert survivor.sweep() == 0  # as a run starts: lists the claims folder, keeps the live claim
    dead = ClaimRegistry(backend.storage("out"), run="dead", lease_s=-1.0)  # its lease has run out
    assert dead.try_claim("first") is None
    assert dead.try_claim("second") is None

    holder = survivor.try_claim("busy")
    assert holder is not None and holder.run == "live"
    assert survivor.try_claim("first") is None  # taken over, though created after the listing
    assert json.loads(backend.read(f"out/{STATE_FOLDER}/claims/first.json"))["run"] == "survivor"
    assert survivor.sweep() == 1  # "second", left by the dead run
    claims = f"out/{STATE_FOLDER}/claims"
    assert backend.files(claims) == [f"{claims}/busy.json", f"{claims}/first.json"]
    survivor.release_all()
    live.release_all()
    assert backend.files(claims) == []


# -- storage options and credentials ----------------------------------------------------------------------


def assert_credentials_reached_the_store(backend: Backend) -> None:
    """The run used the credentials in the options. S3 and Azure prove it by working: the environment
    has none (botocore would raise NoCredentialsError) and azurite checks the SharedKey signature. The
    GCS emulator checks nothing, so look at what it received."""
    if backend.authorizations is not None:
        assert f"Bearer {backend.options['token']}" in backend.authorizations


def secrets_written(backend: Backend, secrets: list[str]) -> dict[str, list[str]]:
    """Every object under DEST that holds any of ``secrets`` (as written, or JSON-escaped)."""
    needles = {s: {s.encode(), json.dumps(s)[1:-1].encode()} for s in secrets}
    found: dict[str, list[str]] = {}
    for path in backend.files("out"):
        data = backend.read(path)
        hits = [s for s, forms in needles.items() if any(form in data for form in forms)]
        if hits:
            found[path] = hits
    return found


@pytest.mark.usefixtures("prefect_harness")
def test_storage_options_from_the_cli(
    backend: Backend, emulator: EmulatorServer, samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = put_inputs(backend, samples, IMAGES[:1])
    options = [
        arg for key, value in backend.options.items() for arg in ("--storage-option", f"{key}={value}")
    ]

    code = cli_main(["run", manifest, "--output", backend.url("out"), *options])

    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "1/1 meshes landed" in printed.out, printed.out
    assert_mesh_landed(backend, stem(IMAGES[0]))
    assert_credentials_reached_the_store(backend)
    assert emulator.stats.submits_accepted == 1
    assert secrets_written(backend, [*backend.secrets, emulator.api_key]) == {}
    for secret in backend.secrets:
        assert secret not in printed.out + printed.err


def test_credentials_are_never_written(
    backend: Backend, emulator: EmulatorServer, samples: Path, prefect_harness: Path
) -> None:
    """Meshes, invalid rows and failed predictions all write records: none holds a credential."""
    manifest = put_inputs(backend, samples, extra_rows="ghost,missing.png\n")
    state, summary = run(backend, manifest)
    assert summary.counts == {"completed": 2, "invalid": 1}
    emulator.config.failure_rate, emulator.config.failure_codes = 1.0, (5003,)
    failing = put_inputs(backend, samples, ["gold-star.png"])
    failed_state, failed = run(backend, failing)
    assert failed.counts == {"failed": 1}
    written = backend.files("out")
    assert len([p for p in written if p.startswith("out/runs/")]) == 2
    assert len([p for p in written if p.endswith("metadata.json")]) == 3
    assert len(ledger(backend)) == 3
    assert_credentials_reached_the_store(backend)

    secrets = [*backend.secrets, emulator.api_key]
    assert secrets_written(backend, secrets) == {}
    for result, final in ((summary, state), (failed, failed_state)):
        text = result.model_dump_json() + (final.message or "")
        assert not [s for s in secrets if s in text]
    stored = [p for p in prefect_harness.rglob("*") if p.is_file()]  # Prefect results and cache records
    assert not [p for p in stored if any(s.encode() in p.read_bytes() for s in secrets)]
