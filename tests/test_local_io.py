"""The cheap paths for large runs: small-file I/O on the event loop for local storage only,
renames that create an item's folder only when it is missing, and fewer GC passes in a batch."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import uuid
from pathlib import Path

import pytest

from flows.pipeline import BATCH_GEN0_THRESHOLD, fewer_gc_passes
from tasks.storage import STAGING_FOLDER, STATE_FOLDER, Storage


def _thread_of(storage: Storage) -> int:
    async def main() -> int:
        return await storage.small_io(threading.get_ident)

    return asyncio.run(main())


def test_small_io_stays_on_the_loop_for_local_storage_only(tmp_path: Path) -> None:
    here = threading.get_ident()
    assert _thread_of(Storage(str(tmp_path))) == here
    assert _thread_of(Storage(f"file://{tmp_path}")) == here
    # An object store (memory:// stands in for one here) is network I/O: never on the loop.
    assert _thread_of(Storage(f"memory://small-io-{uuid.uuid4().hex}")) != here


def test_small_io_passes_arguments_and_errors_through(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))

    async def main() -> None:
        await storage.small_io(storage.write_json, {"a": 1}, "item", "metadata.json")
        assert await storage.small_io(storage.read_json, "item", "metadata.json") == {"a": 1}
        with pytest.raises(ZeroDivisionError):
            await storage.small_io(lambda: 1 / 0)

    asyncio.run(main())


def _staging_files(root: Path) -> list[str]:
    folder = root / STATE_FOLDER / STAGING_FOLDER
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_json_lands_in_new_and_existing_folders_without_leftovers(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_json({"n": 1}, "new-item", "metadata.json")  # folder created by the publish
    storage.write_json({"n": 2}, "new-item", "metadata.json")  # replaced in place
    storage.write_json({"n": 3}, "new-item", "other.json")
    assert storage.read_json("new-item", "metadata.json") == {"n": 2}
    assert storage.read_json("new-item", "other.json") == {"n": 3}
    assert (tmp_path / "new-item" / "metadata.json").read_text().endswith("\n")
    assert _staging_files(tmp_path) == []


def test_unserialisable_json_writes_nothing(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_json({"n": 1}, "item", "metadata.json")
    with pytest.raises(TypeError):
        storage.write_json({"n": object()}, "item", "metadata.json")
    assert storage.read_json("item", "metadata.json") == {"n": 1}
    assert _staging_files(tmp_path) == []


def test_a_failed_publish_consumes_the_staged_file(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    (tmp_path / "item").mkdir()
    (tmp_path / "item" / "mesh.glb").mkdir()  # a folder where the file should go: rename fails
    staged = storage.staging_file("item", "mesh.glb")
    Path(staged).write_bytes(b"glTF")
    with pytest.raises(OSError):
        storage.publish(staged, "item", "mesh.glb")
    assert not os.path.exists(staged)


def test_staging_names_are_unique_and_sweepable(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    names = {os.path.basename(storage.staging_file("item", "mesh.glb")) for _ in range(1000)}
    assert len(names) == 1000
    host, pid = next(iter(names)).split("_")[:2]
    assert pid == str(os.getpid()) and host  # what sweep_staging reads to find dead writers


def test_fewer_gc_passes_during_a_batch_then_restored() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with fewer_gc_passes():
        assert gc.get_threshold()[0] >= BATCH_GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > frozen_before
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_gc_settings_are_restored_when_the_batch_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_gc_passes():
        raise RuntimeError("an item blew up")
    assert gc.get_threshold() == before
