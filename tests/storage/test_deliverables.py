"""Deliverables (``formats``) on every backend: published whole next to the mesh, recorded in the
metadata, nothing staged left behind; asking again adds what is lacking and pays nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorServer
from tasks.deliverables import FILES
from tests.storage.conftest import Backend
from tests.storage.test_backends import partials, put_inputs, run, staged_locally

CONTENT_TYPES = {"web": "model/gltf-binary", "usdz": "model/vnd.usdz+zip", "stl": "model/stl"}


def content_type(backend: Backend, relative: str) -> str | None:
    info: dict[str, Any] = backend.fs.info(backend.path(relative))
    for key in ("ContentType", "contentType", "content_type"):
        if isinstance(info.get(key), str):
            return str(info[key])
    settings = info.get("content_settings")
    return getattr(settings, "content_type", None) or (settings or {}).get("content_type")


@pytest.mark.usefixtures("prefect_harness")
def test_deliverables_are_published_whole_on_the_backend(
    backend: Backend, emulator: EmulatorServer, samples: Path, local_temp: Path
) -> None:
    manifest = put_inputs(backend, samples, ["red-ball.png"])
    state, summary = run(backend, manifest, formats=["glb", "stl", "usdz"])
    assert state.is_completed(), state.message
    paid = emulator.stats.submits_received

    state, summary = run(backend, manifest, formats=["glb", "web", "stl", "usdz", "obj"])

    assert state.is_completed(), state.message
    assert summary.counts == {"already_done": 1} and summary.deliverables_failed == 0
    assert emulator.stats.submits_received == paid  # asking again pays nothing
    metadata = json.loads(backend.read("out/red-ball/metadata.json"))
    assert set(metadata["deliverables"]) == {"web", "stl", "usdz", "obj"}
    for fmt, record in metadata["deliverables"].items():
        data = backend.read(f"out/red-ball/{FILES[fmt]}")
        assert (record["bytes"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        if backend.is_object_store and fmt in CONTENT_TYPES:  # AR Quick Look needs model/vnd.usdz+zip
            assert content_type(backend, f"out/red-ball/{FILES[fmt]}") == CONTENT_TYPES[fmt], fmt
    assert partials(backend) == [] and staged_locally(local_temp) == []
