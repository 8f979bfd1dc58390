"""Claims and staging files left by runs that died must not block or litter later runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tasks.storage import STAGING_FOLDER, STATE_FOLDER, UNREADABLE_CLAIM_GRACE_S, ClaimRegistry, Storage


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_claim_is_respected_and_released(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first, second = ClaimRegistry(storage, "run-a", 600), ClaimRegistry(storage, "run-b", 600)
    assert first.try_claim("k") is None
    holder = second.try_claim("k")
    assert holder is not None and holder.run == "run-a"
    first.release_all()
    assert second.try_claim("k") is None


def test_claims_of_dead_processes_and_empty_claims_are_taken_over(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    claims = tmp_path / STATE_FOLDER / "claims"
    claims.mkdir(parents=True)
    dead = {"run": "old", "host": socket.gethostname(), "pid": _dead_pid(), "expires_at": time.time() + 999}
    (claims / "dead.json").write_text(json.dumps(dead))
    (claims / "empty-old.json").write_bytes(b"")
    old = time.time() - UNREADABLE_CLAIM_GRACE_S - 5
    os.utime(claims / "empty-old.json", (old, old))
    (claims / "empty-new.json").write_bytes(b"")

    registry = ClaimRegistry(storage, "run-new", 600)
    assert registry.try_claim("dead") is None
    assert registry.try_claim("empty-old") is None
    assert registry.try_claim("empty-new") is not None  # its writer may still be writing


def test_sweep_removes_what_dead_runs_left(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    staging = tmp_path / STATE_FOLDER / STAGING_FOLDER
    staging.mkdir(parents=True)
    host = socket.gethostname()
    left = staging / f"{host}_{_dead_pid()}_abc_mesh.glb.partial"
    left.write_bytes(b"half a mesh")
    mine = Path(storage.staging_file("item", "mesh.glb"))
    mine.write_bytes(b"in progress")
    claims = tmp_path / STATE_FOLDER / "claims"
    claims.mkdir()
    dead = {"run": "old", "host": host, "pid": _dead_pid(), "expires_at": time.time() + 999}
    (claims / "k.json").write_text(json.dumps(dead))

    assert storage.sweep_staging() == 1
    assert ClaimRegistry(storage, "run-new", 600).sweep() == 1
    assert not left.exists() and mine.exists()
    assert not (claims / "k.json").exists()
