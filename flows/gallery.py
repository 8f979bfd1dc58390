"""``DEST/index.html``: a gallery of every item in the output, with an interactive 3D viewer per mesh.

What is written, all of it published atomically (staged, then :meth:`Storage.publish`):

- ``DEST/index.html``: the page. Cards are data (one JSON document in the page) rendered by
  ``_gallery/gallery.js`` a screenful at a time, so thousands of items stay light.
- ``DEST/_gallery/``: the viewer (three.js r187 + GLTFLoader + OrbitControls as one classic script,
  vendored in ``flows/gallery_assets/``), the gallery script and its style sheet, and ``cards.json``,
  a cache of what each item's metadata says (keyed by the metadata file's size and mtime/etag), so a
  gallery over a large output re-reads only the metadata that changed.
- ``DEST/<id>/preview.png``: a 256 px thumbnail rendered on the CPU (:mod:`tasks.preview`).
- ``DEST/<id>/mesh.js``: the GLB as base64 in a classic script (``hy3dMeshes[id] = "..."``).
  Chromium lets a page opened from disk load ``<script src>`` from the disk, but refuses it
  ``fetch``/XHR and ES modules; so the viewer injects this script when the card scrolls into view
  and parses the bytes with ``GLTFLoader.parse``, with no request at all. Served over HTTP(S) the
  viewer fetches ``mesh.glb`` itself and uses the sidecar only as a fallback. Meshes larger than
  :data:`MAX_SIDECAR_BYTES` get no sidecar (their card links the GLB and shows the thumbnail when
  opened from disk).
- ``DEST/<id>/source.jpg``: a 256 px JPEG of a stored source image (the original may live on
  another storage); sources given as URLs are linked as they are.

Nothing here may fail an item or a run: :func:`write_preview` logs and returns None,
:func:`publish_gallery` logs and returns None.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import html
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec
from prefect.artifacts import acreate_markdown_artifact

from flows.records import MESH_FILE, METADATA_FILE, RUNS_FOLDER, ItemOutcome, ItemStatus, RunSummary, utc_now
from tasks.meshinfo import FULL_PARSE_MAX_BYTES
from tasks.storage import STATE_FOLDER, Storage, modified_at, storage_error_message

logger = logging.getLogger("hy3d.gallery")

GALLERY_FILE = "index.html"
ASSETS_FOLDER = "_gallery"
CACHE_FILE = "cards.json"
PREVIEW_FILE = "preview.png"
SIDECAR_FILE = "mesh.js"
WEB_SIDECAR_FILE = "mesh.web.js"  # the sidecar of mesh.web.glb (deliverable "web")
SOURCE_FILE = "source.jpg"
PREVIEW_PX = 256
SOURCE_PX = 256
# tasks.preview's limit (its numpy and trimesh are imported by the first preview, not with the flow).
PREVIEW_MAX_BYTES = FULL_PARSE_MAX_BYTES
# A bigger mesh gets no base64 sidecar (it would be 4/3 of the mesh again, parsed as one JS string).
MAX_SIDECAR_BYTES = 48 * 1024 * 1024
# Items whose preview/sidecar/source.jpg are missing (meshes landed before the gallery existed) are
# completed by build_gallery, at most this many per call; later calls do the rest.
MAX_BACKFILL = 200
MAX_ATTEMPTS = 3  # a mesh whose preview failed this many times is left alone until it changes
WORKERS = 4
ASSETS_DIR = Path(__file__).resolve().parent / "gallery_assets"
# Published under DEST/_gallery/ by name; third-party code is kept apart, in vendor/.
ASSET_FILES = {
    "three-viewer.min.js": ASSETS_DIR / "vendor" / "three-viewer.min.js",
    "gallery.js": ASSETS_DIR / "gallery.js",
    "gallery.css": ASSETS_DIR / "gallery.css",
}
CACHE_SCHEMA = "prefect-hunyuan3d/gallery-cache/v1"


@dataclass(frozen=True)
class Gallery:
    """What :func:`build_gallery` wrote."""

    url: str  # the page (a file:// URI for a local output)
    items: int
    landed: int
    not_landed: int
    backfilled: int = 0
    backfill_left: int = 0


# -- writing files atomically ---------------------------------------------------------------


@contextlib.contextmanager
def _staged(storage: Storage, *parts: str) -> Iterator[str]:
    """A local path to fill, published at ``parts`` when the block exits without error.

    Local outputs stage next to the destination (publishing is an atomic rename). For object
    stores the staged file carries the final file name, because s3fs and gcsfs pick the object's
    Content-Type from it: ``index.html`` must be served as text/html to open in a browser."""
    if storage.is_local:
        staged = storage.staging_file(*parts)
        try:
            yield staged
            storage.publish(staged, *parts)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        return
    folder = tempfile.mkdtemp(prefix="hy3d-gallery-")
    try:
        staged = os.path.join(folder, parts[-1])
        yield staged
        storage.publish(staged, *parts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_bytes(storage: Storage, data: bytes, *parts: str) -> None:
    with _staged(storage, *parts) as staged, open(staged, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def _local_copy(storage: Storage, *parts: str) -> Iterator[str]:
    """A local path holding the file at ``parts``: the file itself on a local output, else a download."""
    if storage.is_local:
        yield storage.path(*parts)
        return
    handle, path = tempfile.mkstemp(prefix="hy3d-", suffix=f"-{parts[-1]}")
    os.close(handle)
    try:
        storage.fs.get_file(storage.path(*parts), path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# -- per-item assets --------------------------------------------------------------------------


def write_preview(storage: Storage, item_id: str) -> str | None:
    """Render ``DEST/<id>/preview.png`` from the published mesh, and write the viewer's
    ``mesh.js`` sidecar and the ``source.jpg`` rendition next to it.

    Returns the preview's URL, or None when it could not be made; never raises (a thumbnail must
    never fail the item: problems are logged as warnings)."""
    try:
        return _write_item_assets(storage, item_id, storage.read_json(item_id, METADATA_FILE))
    except Exception as exc:
        logger.warning("%s: could not write the preview: %s: %s", item_id, type(exc).__name__, exc)
        return None


def _write_item_assets(storage: Storage, item_id: str, metadata: Any) -> str | None:
    preview_url: str | None = None
    mesh_bytes = storage.size(item_id, MESH_FILE)
    if mesh_bytes is None:
        logger.warning("%s: no %s to preview", item_id, MESH_FILE)
    elif mesh_bytes > max(PREVIEW_MAX_BYTES, MAX_SIDECAR_BYTES):
        # Neither a preview nor a sidecar: not worth copying the mesh from an object store.
        _drop_sidecar(storage, item_id)
        logger.info("%s: no preview (the mesh is %d MiB)", item_id, mesh_bytes // 2**20)
    else:
        with _local_copy(storage, item_id, MESH_FILE) as mesh_path:
            try:
                _write_sidecar(storage, item_id, mesh_path)
            except Exception as exc:
                logger.warning(
                    "%s: could not write %s: %s: %s", item_id, SIDECAR_FILE, type(exc).__name__, exc
                )
            from tasks.errors import PreviewTooLargeError
            from tasks.preview import render_preview

            try:
                _write_bytes(storage, render_preview(mesh_path, PREVIEW_PX), item_id, PREVIEW_FILE)
                preview_url = storage.url(item_id, PREVIEW_FILE)
            except PreviewTooLargeError as exc:
                logger.info("%s: no preview: %s", item_id, exc)
            except Exception as exc:
                logger.warning("%s: could not render the preview: %s: %s", item_id, type(exc).__name__, exc)
    if isinstance(metadata, dict):
        write_source(storage, item_id, metadata)
    return preview_url


def _write_sidecar(storage: Storage, item_id: str, mesh_path: str, name: str = SIDECAR_FILE) -> bool:
    """``mesh.js``: the GLB as base64 assigned to ``window.hy3dMeshes[id]``, streamed (never the
    whole mesh in memory twice). A mesh over the limit gets none (and loses a stale one)."""
    if os.path.getsize(mesh_path) > MAX_SIDECAR_BYTES:
        _drop_sidecar(storage, item_id, name)
        return False
    key = json.dumps(item_id, ensure_ascii=True)
    with (
        _staged(storage, item_id, name) as staged,
        open(mesh_path, "rb") as source,
        open(staged, "wb") as out,
    ):
        out.write(f'(window.hy3dMeshes=window.hy3dMeshes||{{}})[{key}]="'.encode())
        while chunk := source.read(3 * 1024 * 1024):  # a multiple of 3: no padding mid-stream
            out.write(base64.b64encode(chunk))
        out.write(b'";\n')
    return True


def _drop_sidecar(storage: Storage, item_id: str, name: str = SIDECAR_FILE) -> None:
    """A stale sidecar would show an older mesh than the one published."""
    with contextlib.suppress(FileNotFoundError, OSError):
        storage.fs.rm_file(storage.path(item_id, name))


def write_web_sidecar(storage: Storage, item_id: str, web_glb_path: str) -> bool:
    """``mesh.web.js``: the web GLB's sidecar, so that the viewer shows the web GLB from file:// too
    (:mod:`flows.deliver` writes it with the web GLB). Never raises (logs instead)."""
    try:
        return _write_sidecar(storage, item_id, web_glb_path, WEB_SIDECAR_FILE)
    except Exception as exc:
        logger.warning("%s: could not write %s: %s: %s", item_id, WEB_SIDECAR_FILE, type(exc).__name__, exc)
        return False


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def write_source(storage: Storage, item_id: str, metadata: Mapping[str, Any]) -> bool:
    """``DEST/<id>/source.jpg``: a small JPEG of the item's stored source image (URL sources are
    linked instead). True when written; problems are logged, never raised."""
    source = (metadata.get("source") or {}).get("image")
    if not isinstance(source, str) or not source or _is_url(source):
        return False
    try:
        with fsspec.open(source, "rb", **storage.storage_options) as handle:
            data = handle.read(64 * 1024 * 1024)
        _write_bytes(storage, _jpeg_rendition(data, SOURCE_PX), item_id, SOURCE_FILE)
        return True
    except Exception as exc:
        logger.warning("%s: could not copy the source image: %s: %s", item_id, type(exc).__name__, exc)
        return False


def _jpeg_rendition(data: bytes, size: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (size, size))  # cheap JPEG downscale; a no-op for other formats
        image = opened.convert("RGBA")
    image.thumbnail((size, size))
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


# -- the gallery ------------------------------------------------------------------------------


def gallery_url(storage: Storage) -> str:
    """Where the gallery page is: a ``file://`` URI for a local output, else the storage URL."""
    if storage.is_local:
        return Path(storage.path(GALLERY_FILE)).resolve().as_uri()
    return storage.url(GALLERY_FILE)


@dataclass
class _Entry:
    """One id's files under DEST, from one listing."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.files

    def key(self, name: str) -> str | None:
        info = self.files.get(name)
        return None if info is None else _version(info)

    def stale(self, asset: str) -> bool:
        """Missing, or older than the mesh it was made from."""
        if asset not in self.files:
            return True
        made, mesh = modified_at(self.files[asset]), modified_at(self.files.get(MESH_FILE, {}))
        return made is not None and mesh is not None and made + 1e-3 < mesh


def build_gallery(storage: Storage, summary: RunSummary, *, max_backfill: int = MAX_BACKFILL) -> Gallery:
    """Write ``DEST/index.html`` and its assets over every item in the output (the ids that have
    a ``metadata.json``, plus this run's items that have none, such as rejected rows); returns what
    was written. Raises on storage errors (see :func:`publish_gallery` for the safe call)."""
    entries = _list_items(storage)
    cache = storage.read_json(ASSETS_FOLDER, CACHE_FILE)
    cached: dict[str, Any] = {}
    if isinstance(cache, dict) and cache.get("schema") == CACHE_SCHEMA:
        cached = cache.get("items") or {}

    with ThreadPoolExecutor(WORKERS) as pool:
        records = _read_records(storage, pool, entries, cached)
        jobs = _backfill_jobs(entries, records)
        backfill, left = jobs[:max_backfill], max(0, len(jobs) - max_backfill)
        if backfill:
            logger.info("gallery: writing previews/sidecars/sources for %d item(s)", len(backfill))
        _run_backfill(storage, pool, backfill, entries, records)
        if left:
            logger.info("gallery: %d item(s) still lack previews; the next gallery write continues", left)

    cards = [_with_files(item_id, records[item_id]["card"], entries[item_id]) for item_id in records]
    cards += _cards_without_metadata(summary, set(records))
    _apply_latest_run(cards, summary)
    cards.sort(key=lambda card: (str(card["id"]).lower(), str(card["id"])))

    versions = _write_assets(storage, cache if isinstance(cache, dict) else {})
    storage.write_json(
        {"schema": CACHE_SCHEMA, "written_at": utc_now(), "assets": versions, "items": records},
        ASSETS_FOLDER,
        CACHE_FILE,
    )
    page = render_index(cards, summary, storage, versions)
    _write_bytes(storage, page.encode("utf-8"), GALLERY_FILE)
    landed = sum(1 for card in cards if card["landed"])
    return Gallery(
        url=gallery_url(storage),
        items=len(cards),
        landed=landed,
        not_landed=len(cards) - landed,
        backfilled=len(backfill),
        backfill_left=left,
    )


# (item id, needs its preview and sidecar, needs its source.jpg)
_BackfillJob = tuple[str, bool, bool]


def _read_records(
    storage: Storage, pool: ThreadPoolExecutor, entries: Mapping[str, _Entry], cached: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The cache record of every id with a ``metadata.json``, keyed by id: the cached one while the
    metadata file is unchanged, else one made from the metadata read anew."""
    ids = sorted(item_id for item_id, entry in entries.items() if entry.has(METADATA_FILE))
    records: dict[str, dict[str, Any]] = {}
    to_read = []
    for item_id in ids:
        previous = cached.get(item_id)
        if isinstance(previous, dict) and previous.get("key") == entries[item_id].key(METADATA_FILE):
            records[item_id] = previous
        else:
            to_read.append(item_id)
    for item_id, metadata in zip(
        to_read, pool.map(lambda i: storage.read_json(i, METADATA_FILE), to_read), strict=True
    ):
        if isinstance(metadata, dict):
            records[item_id] = {
                "key": entries[item_id].key(METADATA_FILE),
                "card": _card_from_metadata(item_id, metadata),
                "source_checked": False,
                "assets_failed": None,  # {"mesh": key, "times": n}: tried n times in vain
            }
    return records


def _backfill_jobs(
    entries: Mapping[str, _Entry], records: Mapping[str, dict[str, Any]]
) -> list[_BackfillJob]:
    """The landed meshes that lack their per-item files (landed before the gallery existed, or
    write_preview was not called), leaving out previews that failed too often and sizes that get none."""
    jobs = []
    for item_id, record in records.items():
        entry, card = entries[item_id], record["card"]
        mesh_key = entry.key(MESH_FILE)
        needs_assets = (
            card["landed"]
            and entry.has(MESH_FILE)
            and _attempts(record, mesh_key) < MAX_ATTEMPTS
            and (
                (entry.stale(PREVIEW_FILE) and _size(entry, MESH_FILE) <= PREVIEW_MAX_BYTES)
                or (entry.stale(SIDECAR_FILE) and _size(entry, MESH_FILE) <= MAX_SIDECAR_BYTES)
            )
        )
        needs_source = (
            not entry.has(SOURCE_FILE)
            and not record.get("source_checked")
            and card.get("source_kind") == "stored"
        )
        if needs_assets or needs_source:
            jobs.append((item_id, needs_assets, needs_source))
    return jobs


def _run_backfill(
    storage: Storage,
    pool: ThreadPoolExecutor,
    jobs: list[_BackfillJob],
    entries: Mapping[str, _Entry],
    records: Mapping[str, dict[str, Any]],
) -> None:
    """Write the jobs' files; note in the records what failed or was checked, and in the entries
    what now exists."""
    for (item_id, needs_assets, needs_source), done in zip(
        jobs, pool.map(lambda job: _backfill(storage, job[0], job[1], job[2]), jobs), strict=True
    ):
        record, entry = records[item_id], entries[item_id]
        if needs_assets and not done.get(PREVIEW_FILE):
            mesh_key = entry.key(MESH_FILE)
            record["assets_failed"] = {"mesh": mesh_key, "times": _attempts(record, mesh_key) + 1}
        if needs_source:
            record["source_checked"] = True
        for name, made in done.items():
            if made:
                entry.files[name] = {"size": 1}


def _attempts(record: Mapping[str, Any], mesh_key: str | None) -> int:
    """How many gallery writes already failed to make this mesh's preview."""
    failed = record.get("assets_failed")
    if isinstance(failed, dict) and failed.get("mesh") == mesh_key:
        return int(failed.get("times") or 0)
    return 0


def _backfill(storage: Storage, item_id: str, needs_assets: bool, needs_source: bool) -> dict[str, bool]:
    made: dict[str, bool] = {}
    try:
        metadata = storage.read_json(item_id, METADATA_FILE)
        if needs_assets:
            made[PREVIEW_FILE] = _write_item_assets(storage, item_id, None) is not None
            made[SIDECAR_FILE] = storage.exists(item_id, SIDECAR_FILE)
        if needs_source and isinstance(metadata, dict):
            made[SOURCE_FILE] = write_source(storage, item_id, metadata)
    except Exception as exc:
        logger.warning("%s: gallery backfill failed: %s: %s", item_id, type(exc).__name__, exc)
    return made


def _list_items(storage: Storage) -> dict[str, _Entry]:
    """Every ``<id>/<file>`` under DEST in one listing (a flat, paginated listing on object stores)."""
    try:
        listing: dict[str, dict[str, Any]] = storage.fs.find(storage.root, detail=True)
    except FileNotFoundError:
        return {}
    root = storage.root.rstrip("/")
    stripped = storage.fs._strip_protocol(root).rstrip("/")
    entries: dict[str, _Entry] = {}
    for path, info in listing.items():
        name = str(path)
        for prefix in (root, stripped):
            if name.startswith(prefix + "/"):
                relative = name[len(prefix) + 1 :]
                break
        else:
            continue
        item_id, _, file_name = relative.partition("/")
        if not file_name or "/" in file_name or item_id.startswith(".") or item_id == STATE_FOLDER:
            continue
        entries.setdefault(item_id, _Entry()).files[file_name] = info
    return entries


def _version(info: Mapping[str, Any]) -> str:
    """Changes whenever the file does: size plus the backend's etag or modification time."""
    for name in (
        "ETag",
        "etag",
        "md5Hash",
        "generation",
        "mtime",
        "LastModified",
        "last_modified",
        "updated",
    ):
        if info.get(name) is not None:
            return f"{info.get('size')}:{info[name]}"
    return f"{info.get('size')}:{info.get('created')}"


def _size(entry: _Entry, name: str) -> int:
    size = entry.files.get(name, {}).get("size")
    return int(size) if isinstance(size, int | float) else 0


def _landed(status: Any) -> bool:
    try:
        return ItemStatus(status).landed
    except ValueError:
        return False


def _price(metadata: Mapping[str, Any]) -> str | None:
    """The price as shown, if the metadata records one: a number (USD) or {amount|price, currency}."""
    for value in (
        metadata.get("price_usd"),
        metadata.get("price"),
        metadata.get("cost"),
        (metadata.get("prediction") or {}).get("price"),
    ):
        amount, currency = value, "USD"
        if isinstance(value, dict):
            amount = value.get("amount", value.get("price", value.get("usd")))
            currency = str(value.get("currency") or "USD")
        if isinstance(amount, int | float) and not isinstance(amount, bool):
            text = f"{amount:.4f}".rstrip("0")
            text = text + "0" * max(0, 2 - len(text.partition(".")[2]))
            return f"${text}" if currency.upper() == "USD" else f"{text} {currency}"
        if isinstance(amount, str) and amount.strip():
            return amount.strip()
    return None


def _card_from_metadata(item_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a card shows, from ``metadata.json`` (files and URLs are added per listing)."""
    status = str(metadata.get("status") or "unknown")
    mesh = metadata.get("mesh") or {}
    timings = metadata.get("timings") or {}
    error = metadata.get("error") or {}
    prediction = metadata.get("prediction") or {}
    output = metadata.get("output") or {}
    image = metadata.get("image") or {}
    source = (metadata.get("source") or {}).get("image")
    source = source if isinstance(source, str) else None
    return {
        "id": item_id,
        "status": status,
        "landed": _landed(status),
        "faces": mesh.get("faces"),
        "vertices": mesh.get("vertices"),
        "seconds": timings.get("wall_seconds"),
        "finished": timings.get("finished_at"),
        "price": _price(metadata),
        "model": metadata.get("model"),
        "prediction": prediction.get("id"),
        "bytes": output.get("bytes"),
        "mesh_sha": (output.get("sha256") or "")[:12] or None,
        "image_sha": (image.get("sha256") or image.get("url_sha256") or "")[:12] or None,
        "error": error.get("message"),
        "error_code": error.get("code"),
        "warnings": [str(w) for w in metadata.get("warnings") or []][:5],
        "source": source,
        "source_kind": None if source is None else ("url" if _is_url(source) else "stored"),
        "deliverables": _deliverables(metadata.get("deliverables")),
    }


def _deliverables(records: Any) -> list[dict[str, Any]]:
    """What the card lists of ``metadata.json``'s ``deliverables``: format, file, bytes or error."""
    if not isinstance(records, dict):
        return []
    listed = []
    for fmt, record in records.items():
        if not isinstance(record, dict):
            continue
        path = record.get("path")
        listed.append(
            {
                "format": str(fmt),
                "path": path if isinstance(path, str) and "/" not in path else None,
                "bytes": record.get("bytes") if isinstance(record.get("bytes"), int) else None,
                "sha": (str(record.get("sha256") or ""))[:12] or None,
                "error": str(record["error"])[:300] if record.get("error") else None,
            }
        )
    return listed


def _cards_without_metadata(summary: RunSummary, known: set[str]) -> list[dict[str, Any]]:
    """This run's items that left no metadata (rejected rows, skipped or claimed items)."""
    cards = []
    for item in summary.items:
        if item.id in known:
            continue
        card = _card_from_outcome(item)
        card.update(preview=None, mesh=None, sidecar=None, metadata=None)
        card["source_img"] = item.source if _is_url(item.source) else None
        cards.append(card)
    return cards


def _card_from_outcome(item: ItemOutcome) -> dict[str, Any]:
    return {
        "id": item.id,
        "status": item.status.value,
        "landed": item.status.landed,
        "faces": item.faces,
        "vertices": None,
        "seconds": item.seconds,
        "finished": None,
        "price": None,
        "model": None,
        "prediction": item.prediction_id,
        "bytes": None,
        "mesh_sha": None,
        "image_sha": None,
        "error": item.error,
        "error_code": item.error_code,
        "warnings": [],
        "source": item.source or None,
        "source_kind": None if not item.source else ("url" if _is_url(item.source) else "stored"),
        "row": item.row,
    }


def _apply_latest_run(cards: list[dict[str, Any]], summary: RunSummary) -> None:
    """Say on a card when this run's attempt ended differently from what the output holds (e.g. a
    mesh landed earlier, this run's attempt failed; or another run is landing it)."""
    outcomes = {item.id: item for item in summary.items}
    for card in cards:
        outcome = outcomes.get(card["id"])
        card["this_run"] = outcome is not None
        if outcome is None or outcome.status.value == card["status"] or outcome.status.landed:
            continue
        detail = f": {outcome.error}" if outcome.error else ""
        card["note"] = f"latest run: {outcome.status.value}{detail}"


def _href(item_id: str, name: str, version: str | None = None) -> str:
    return f"{quote(item_id, safe='')}/{name}" + (f"?v={version}" if version else "")


def _with_files(item_id: str, card: dict[str, Any], entry: _Entry) -> dict[str, Any]:
    """The card plus relative links to the files that exist (versioned against stale caches)."""
    result = dict(card)
    mesh_version = card.get("mesh_sha") or entry.key(MESH_FILE)
    version = hashlib.sha256(str(mesh_version).encode()).hexdigest()[:12]
    has_mesh = entry.has(MESH_FILE)
    result["mesh"] = _href(item_id, MESH_FILE) if has_mesh else None
    result["sidecar"] = (
        _href(item_id, SIDECAR_FILE, version) if has_mesh and entry.has(SIDECAR_FILE) else None
    )
    result["preview"] = _href(item_id, PREVIEW_FILE, version) if entry.has(PREVIEW_FILE) else None
    result["metadata"] = _href(item_id, METADATA_FILE)
    if entry.has(SOURCE_FILE):
        result["source_img"] = _href(item_id, SOURCE_FILE, card.get("image_sha") or None)
    elif card.get("source_kind") == "url":
        result["source_img"] = card.get("source")
    else:
        result["source_img"] = None
    if card["landed"] and not has_mesh:
        result["note"] = f"{MESH_FILE} is missing from the output"
    deliverables = []
    for record in card.get("deliverables") or []:
        shown = dict(record)
        present = bool(record.get("path")) and entry.has(record["path"])
        shown["href"] = _href(item_id, record["path"], record.get("sha")) if present else None
        deliverables.append(shown)
        if record["format"] == "web" and present and has_mesh:
            result["web"] = shown["href"]
            if entry.has(WEB_SIDECAR_FILE):
                result["web_sidecar"] = _href(item_id, WEB_SIDECAR_FILE, record.get("sha"))
        if record["format"] == "usdz" and present:
            result["usdz"] = _href(item_id, record["path"])  # AR Quick Look: the plain file name
    result["deliverables"] = deliverables
    return result


def _write_assets(storage: Storage, previous_cache: Mapping[str, Any]) -> dict[str, str]:
    """Copy the viewer, script and style sheet to ``DEST/_gallery/`` unless the same are there."""
    assets = previous_cache.get("assets")
    published: Mapping[str, Any] = assets if isinstance(assets, dict) else {}
    versions: dict[str, str] = {}
    for name, source in ASSET_FILES.items():
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        versions[name] = digest
        if published.get(name) == digest and storage.size(ASSETS_FOLDER, name) == len(data):
            continue
        _write_bytes(storage, data, ASSETS_FOLDER, name)
    return versions


def _json_for_html(value: Any) -> str:
    """JSON safe inside a <script> element (no way to close it or open a comment)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_index(
    cards: list[dict[str, Any]], summary: RunSummary, storage: Storage, versions: Mapping[str, str]
) -> str:
    """The page: a header (counts, latest run), filters, and the cards as JSON for gallery.js."""
    landed = sum(1 for card in cards if card["landed"])
    runs_prefix = storage.url(RUNS_FOLDER) + "/"
    run_link = None
    if summary.summary_url and summary.summary_url.startswith(runs_prefix):
        run_link = f"{RUNS_FOLDER}/{quote(summary.summary_url[len(runs_prefix) :], safe='')}"
    page = {
        "output": storage.url(),
        "written_at": utc_now(),
        "latest_run": {
            "headline": summary.headline(),
            "finished_at": summary.finished_at,
            "summary": run_link,
            "stop_reason": summary.stop_reason,
        },
    }

    def asset(name: str) -> str:
        return f"{ASSETS_FOLDER}/{name}?v={versions.get(name, '')}"

    title = f"Hunyuan3D meshes — {storage.url()}"
    counts = f"{len(cards)} item(s): {landed} landed, {len(cards) - landed} did not land"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="prefect-hunyuan3d">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{asset("gallery.css")}">
</head>
<body>
<header class="top">
  <h1>Hunyuan3D meshes</h1>
  <p class="where"><code>{html.escape(storage.url())}</code></p>
  <p class="counts" id="counts">{html.escape(counts)}</p>
  <p class="run" id="run"></p>
  <div class="filters" role="toolbar" aria-label="Filter the items">
    <button type="button" data-filter="all" aria-pressed="true">All</button>
    <button type="button" data-filter="landed" aria-pressed="false">Landed</button>
    <button type="button" data-filter="failed" aria-pressed="false">Did not land</button>
    <input type="search" id="search" placeholder="Filter by id" aria-label="Filter by id">
  </div>
</header>
<main id="grid" class="grid" aria-live="polite"></main>
<div id="more" class="more"></div>
<noscript><p class="noscript">The gallery needs JavaScript. Each item's files are in its folder:
<code>&lt;id&gt;/mesh.glb</code>, <code>&lt;id&gt;/metadata.json</code>,
<code>&lt;id&gt;/preview.png</code>.</p></noscript>
<script type="application/json" id="hy3d-page">{_json_for_html(page)}</script>
<script type="application/json" id="hy3d-items">{_json_for_html(cards)}</script>
<script src="{asset("three-viewer.min.js")}"></script>
<script src="{asset("gallery.js")}"></script>
</body>
</html>
"""


# -- Prefect ----------------------------------------------------------------------------------


def gallery_markdown(gallery: Gallery, summary: RunSummary) -> str:
    """The ``hy3d-gallery`` artifact: where the gallery is and what it holds."""
    lines = [
        "# Hunyuan3D gallery",
        "",
        f"[Open the gallery]({gallery.url}) — {gallery.items} item(s) in the output: "
        f"{gallery.landed} landed, {gallery.not_landed} did not land.",
        "",
        f"`{gallery.url}`",
        "",
        f"This run: {summary.headline()}.",
    ]
    if gallery.url.startswith("file://"):
        lines += [
            "",
            "Browsers do not follow file:// links from a web page: paste the address into the address bar.",
        ]
    else:
        lines += [
            "",
            "Open it where the output is served over HTTP(S) (for example a bucket website or a "
            "presigned URL of index.html); every file it loads is relative to it.",
        ]
    if gallery.backfill_left:
        lines += ["", f"{gallery.backfill_left} older item(s) still lack a preview; the next run adds them."]
    return "\n".join(lines) + "\n"


async def publish_gallery(
    storage: Storage, summary: RunSummary, *, max_backfill: int = MAX_BACKFILL
) -> str | None:
    """Write the gallery (in a thread) and the ``hy3d-gallery`` markdown artifact. Returns the
    gallery's URL, or None when it could not be written; never raises (logged as a warning)."""
    try:
        gallery = await asyncio.to_thread(
            functools.partial(build_gallery, storage, summary, max_backfill=max_backfill)
        )
    except Exception as exc:
        clear = storage_error_message(exc, storage.root_url)
        logger.warning("could not write the gallery: %s", clear or f"{type(exc).__name__}: {exc}")
        return None
    try:
        await acreate_markdown_artifact(
            gallery_markdown(gallery, summary), key="hy3d-gallery", description=f"Gallery: {gallery.url}"
        )
    except Exception as exc:
        logger.warning("could not create the gallery artifact: %s", exc)
    return gallery.url
