"""Deliverables for each item (``formats``): made from the verified ``mesh.glb``, published
all-or-nothing, recorded under ``deliverables`` in ``metadata.json``.

- A new mesh gets every asked format. An item already done gets only what it lacks: a format not
  made yet, one whose file is gone or changed, one made with other settings (``web_texture_px``,
  ``max_faces``), or one that failed before. Nothing is asked of WaveSpeed for that; and when nothing
  is lacking nothing is written, not even the metadata.
- Each deliverable is built in a private temporary folder, verified (:mod:`tasks.deliverables`), then
  moved into the output's staging folder and renamed into place (local outputs), or uploaded from a
  file carrying its final name, so object stores see the right Content-Type (AR Quick Look needs
  ``model/vnd.usdz+zip``). A reader never sees a partial file.
- A deliverable that cannot be made is recorded as ``{"error": ..., "settings": ...}``; the mesh and
  the item's status stay as they are, and the run summary counts it.
- Conversions are CPU work: they run in worker threads, at most :data:`CONVERSION_SLOTS` items at
  once per run (gltfpack runs in a node subprocess meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.progress import MESH_FILE, METADATA_FILE
from tasks.deliverables import FILES, DeliverableSettings, build, is_current
from tasks.fetch import file_digest
from tasks.storage import Storage

logger = logging.getLogger("hy3d.deliver")

# Items converted at once per run: conversions are CPU-bound (trimesh, Pillow, USD, gltfpack).
CONVERSION_SLOTS = max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def _local_mesh(storage: Storage, item_id: str, folder: str) -> Iterator[str]:
    """A local path of the item's published mesh: the file itself locally, else a download."""
    if storage.is_local:
        yield storage.path(item_id, MESH_FILE)
        return
    path = os.path.join(folder, MESH_FILE)
    storage.fs.get_file(storage.path(item_id, MESH_FILE), path)
    yield path


@dataclass
class Deliverer:
    """Makes a run's deliverables; one per run (it holds the run's conversion slots)."""

    settings: DeliverableSettings
    storage: Storage
    sidecars: bool = True  # write the gallery's mesh.web.js next to a web GLB (runs with previews)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONVERSION_SLOTS))

    def lacking(self, item_id: str, records: Mapping[str, Any]) -> list[str]:
        """The asked formats this item lacks (blocking: one size check per recorded deliverable)."""
        todo = []
        for fmt in self.settings.formats:
            record = records.get(fmt)
            if not isinstance(record, dict) or not is_current(record, self.settings.recipe(fmt)):
                todo.append(fmt)
            elif self.storage.size(item_id, FILES[fmt]) != record["bytes"]:
                todo.append(fmt)  # removed or replaced since: made again
        return todo

    async def deliver(self, item_id: str, records: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The item's deliverables records after making what it lacks (``records``: what its metadata
        holds; None for a mesh that just landed: everything asked is made). Never raises."""
        current = dict(records or {})
        formats = list(self.settings.formats)
        try:
            if current:
                formats = await self.storage.small_io(self.lacking, item_id, current)
                if not formats:
                    return current
            async with self.slots:
                made = await asyncio.to_thread(self._make, item_id, formats)
        except Exception as exc:  # listing or downloading the mesh failed: every format to make failed
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("%s: no deliverables: %s", item_id, reason)
            made = {fmt: {"error": reason, "settings": self.settings.recipe(fmt)} for fmt in formats}
        current.update(made)
        return current

    async def add_to_existing(self, item_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """For an item already done: make what it lacks and, when anything changed, rewrite its
        metadata with the new ``deliverables``. Returns the records. Never raises."""
        recorded = metadata.get("deliverables")
        before = recorded if isinstance(recorded, dict) else {}
        after = await self.deliver(item_id, before)
        if after != before:
            updated = {**metadata, "deliverables": after}
            if "tool" in updated:  # keep the tool stamp last, as metadata_document writes it
                updated["tool"] = updated.pop("tool")
            try:
                await self.storage.small_io(self.storage.write_json, updated, item_id, METADATA_FILE)
            except OSError as exc:
                logger.warning("%s: could not record the deliverables: %s", item_id, exc)
        return after

    def _make(self, item_id: str, formats: list[str]) -> dict[str, Any]:
        made: dict[str, Any] = {}
        with (
            tempfile.TemporaryDirectory(prefix="hy3d-deliver-") as work,
            _local_mesh(self.storage, item_id, work) as mesh,
        ):
            for fmt in formats:
                made[fmt] = self._make_one(item_id, fmt, mesh, work)
        return made

    def _make_one(self, item_id: str, fmt: str, mesh: str, work: str) -> dict[str, Any]:
        recipe = self.settings.recipe(fmt)
        folder = os.path.join(work, fmt)
        os.makedirs(folder)
        started = time.monotonic()
        try:
            produced = build(fmt, mesh, folder, self.settings)
            size, sha256 = file_digest(produced)
            name = FILES[fmt]
            if fmt == "web" and self.sidecars:
                _web_sidecar(self.storage, item_id, produced)
            if self.storage.is_local:  # renamed into place from the output's own staging folder
                staged = self.storage.staging_file(item_id, name)
                shutil.move(produced, staged)
                self.storage.publish(staged, item_id, name)
            else:  # uploaded in one request from a file named like the object (its Content-Type)
                self.storage.publish(produced, item_id, name)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("%s: could not make %s: %s", item_id, FILES.get(fmt, fmt), reason)
            return {"error": reason[:2000], "settings": recipe}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return {
            "path": name,
            "bytes": size,
            "sha256": sha256,
            "settings": recipe,
            "seconds": round(time.monotonic() - started, 3),
        }


def _web_sidecar(storage: Storage, item_id: str, path: str) -> None:
    from flows.gallery import write_web_sidecar

    write_web_sidecar(storage, item_id, path)
