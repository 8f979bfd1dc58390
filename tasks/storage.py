"""Output storage on any fsspec URL, with all-or-nothing publishing.

A reader must never see a half-written ``mesh.glb`` or ``metadata.json``. Local file systems get
that from ``os.replace`` of a staging file in the same folder. Object stores (S3, GCS, Azure) have
no rename, but an object only becomes visible once its upload completes, so the staged local file
is uploaded straight to its final key.

Every method here is blocking I/O; async callers run them with ``asyncio.to_thread``, or, for a few
small files, with :meth:`Storage.small_io`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import mimetypes
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import fsspec
from fsspec import AbstractFileSystem

from tasks.errors import OutputNotWritableError, UnsafePathError
from tasks.redact import redact

# The tool's own state under DEST: ledger, claims, staging files. Never an item id (ids can't start with ".").
STATE_FOLDER = ".hy3d"
STAGING_FOLDER = "staging"
STALE_STAGING_S = 24 * 3600.0
P = ParamSpec("P")
T = TypeVar("T")
_HOST = socket.gethostname()
# Staging names: a random prefix per process and a counter (uuid4 reads the OS's random source
# every call, and a run names tens of thousands of staging files).
_TOKEN_PREFIX = uuid.uuid4().hex[:12]
_TOKEN_COUNTER = itertools.count()


def _unique_token() -> str:
    return f"{_TOKEN_PREFIX}{next(_TOKEN_COUNTER):x}"


async def small_io(local: bool, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``call``, a few operations on small files, where it costs least.

    On an object store that is network I/O: a worker thread. On a local file system it runs right
    here on the event loop: its system calls take less than the hand-off to a worker thread and
    back (two thread wake-ups and two GIL transfers), which adds up at thousands of items in flight
    (docs/performance.md, "CPU on the event loop")."""
    if local:
        return call(*args, **kwargs)
    return await asyncio.to_thread(call, *args, **kwargs)


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


class Storage:
    """A folder on some fsspec file system: ``Storage("s3://bucket/meshes", {"key": ...})``."""

    def __init__(self, root_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not root_url or not root_url.strip():
            raise ValueError("the output location is empty")
        self.root_url = root_url.rstrip("/") or root_url
        self.storage_options = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(self.root_url, **self.storage_options)
        self.fs: AbstractFileSystem = fs
        self.root: str = root.rstrip("/") or root
        self.is_local = _is_local(fs)
        self._staging_made = False  # the local staging folder exists (made once per object)

    def __repr__(self) -> str:
        # storage_options may hold credentials: never show them.
        return f"Storage({self.root_url!r})"

    async def small_io(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``call``, a few operations on small files of this storage (JSON state, a stat):
        see :func:`small_io`."""
        return await small_io(self.is_local, call, *args, **kwargs)

    def path(self, *parts: str) -> str:
        """The file system path (no protocol) of ``parts`` under the root."""
        return "/".join([self.root, *_checked(parts)])

    def url(self, *parts: str) -> str:
        """The user-facing URL of ``parts`` under the root, protocol kept."""
        return "/".join([self.root_url, *_checked(parts)])

    def uncached(self, path: str) -> str:
        """``path`` (a file system path), with whatever the client cached about it and its folder
        dropped. Object-store clients (s3fs, gcsfs, adlfs) answer ``info``/``exists``/``open`` from a
        folder listing they took earlier, however old, and other runs, processes and machines write
        here too: what decides whether to pay, publish or skip is read afresh. (adlfs drops only the
        exact path it is given, hence the folder too.)"""
        self.fs.invalidate_cache(path)
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])
        return path

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.uncached(self.path(*parts))))

    def size(self, *parts: str) -> int | None:
        try:
            info = self.fs.info(self.uncached(self.path(*parts)))
        except FileNotFoundError:
            return None
        size = info.get("size")
        return int(size) if size is not None else None

    def read_json(self, *parts: str) -> Any:
        """The parsed JSON at ``parts``, or None when it does not exist or is not valid JSON."""
        try:
            with self.fs.open(self.uncached(self.path(*parts)), "rb") as handle:
                return json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return None

    def ensure_writable(self) -> None:
        """Create the root and prove we can write and delete there (fails early with a clear error)."""
        self.fs.makedirs(self.root, exist_ok=True)
        probe = self.path(f".hy3d-write-probe-{uuid.uuid4().hex}")
        self.fs.pipe_file(probe, b"ok")
        self.fs.rm_file(probe)

    # -- staging and publishing ---------------------------------------------------------------

    def staging_file(self, *parts: str) -> str:
        """A local path to write the future content of ``parts`` into before :meth:`publish`."""
        name = parts[-1] if parts else "file"
        if self.is_local:
            # Same file system as the destination, so publishing is an atomic rename; named after
            # the writing process so a later run can sweep what a killed one left.
            folder = self.path(STATE_FOLDER, STAGING_FOLDER)
            if not self._staging_made:
                os.makedirs(folder, exist_ok=True)
                self._staging_made = True
            return os.path.join(folder, f"{_HOST}_{os.getpid()}_{_unique_token()}_{name}.partial")
        handle, path = tempfile.mkstemp(prefix="hy3d-", suffix=f"-{name}.partial")
        os.close(handle)
        return path

    def sweep_staging(self) -> int:
        """Delete staging files left by processes that died (this host) or long ago (any host)."""
        if not self.is_local:
            return 0  # staged in the machine's temp folder, never in the bucket
        folder = self.path(STATE_FOLDER, STAGING_FOLDER)
        removed = 0
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        me = socket.gethostname()
        for name in names:
            host, _, rest = name.partition("_")
            pid_text = rest.partition("_")[0]
            path = os.path.join(folder, name)
            try:
                age = time.time() - os.path.getmtime(path)
            except FileNotFoundError:
                continue
            dead = host == me and pid_text.isdigit() and not process_alive(int(pid_text))
            if dead or age > STALE_STAGING_S:
                discard(path)
                removed += 1
        return removed

    def publish(self, staged: str, *parts: str) -> None:
        """Make the staged file visible at ``parts`` in one step; the staged file is consumed."""
        final = self.path(*parts)
        try:
            if self.is_local:
                try:
                    os.replace(staged, final)
                except FileNotFoundError:
                    if not os.path.exists(staged):
                        raise
                    # The item's folder does not exist yet: only then is it created (at thousands
                    # of files a run, a makedirs before every rename is a cost worth skipping).
                    os.makedirs(self.path(*parts[:-1]), exist_ok=True)
                    os.replace(staged, final)
                return  # renamed: nothing left to discard
            self.fs.makedirs(self.path(*parts[:-1]), exist_ok=True)
            self.fs.put_file(staged, final, **_upload_options(self.fs, parts[-1]))
        except BaseException:
            discard(staged)
            raise
        discard(staged)

    def write_json(self, data: Any, *parts: str) -> None:
        """Write JSON atomically (staged, then published), secrets redacted."""
        text = redact(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False)) + "\n"
        staged = self.staging_file(*parts)
        try:
            with open(staged, "w", encoding="utf-8") as handle:
                handle.write(text)
        except BaseException:
            discard(staged)
            raise
        self.publish(staged, *parts)


def _upload_options(fs: AbstractFileSystem, name: str) -> dict[str, Any]:
    """The object's Content-Type from its final name, for stores that do not guess it: s3fs and gcsfs
    take it from the local file's name (stage files under their final name for them), adlfs leaves
    application/octet-stream (and AR Quick Look opens only model/vnd.usdz+zip)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    content_type = mimetypes.guess_type(name)[0]
    if content_type and protocols & {"abfs", "az", "abfss"}:
        return {"content_settings": {"content_type": content_type}}
    return {}


def _checked(parts: tuple[str, ...]) -> tuple[str, ...]:
    # Ids are validated when the manifest is read; this is the last line of defence, so that no
    # component can ever address a file outside DEST.
    for part in parts:
        if not part or part in (".", "..") or any(c in part for c in "/\\\0"):
            raise UnsafePathError(f"refusing unsafe path component {part!r}")
    return parts


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def writable_storage(output: str, options: Mapping[str, Any]) -> Storage:
    """``Storage(output)``, proved writable; any failure is one :class:`OutputNotWritableError`."""
    try:
        storage = Storage(output, options)
        storage.ensure_writable()
    except Exception as exc:  # any backend error: the message names the URL and the cause
        clear = storage_error_message(exc, output)
        raise OutputNotWritableError(
            clear or f"cannot write to the output {output!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return storage


# What a person can do something about, in their words rather than "[Errno 28] No space left on
# device: '/data/out/.hy3d/staging/host_123_9f..._mesh.glb.partial'".
_DENIED = (errno.EACCES, errno.EPERM)
_FULL = {errno.ENOSPC: "no space left on the device holding", errno.EDQUOT: "disk quota exceeded on"}


def storage_error_message(exc: BaseException, output: str) -> str | None:
    """One clear sentence for an error writing to ``output`` (the URL as the user gave it): it, or
    a folder in its path, is a file; permission denied; a read-only file system; a full disk. None
    for anything else (the caller keeps the error's own words)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        # EEXIST (from makedirs): the path itself is a file; ENOTDIR: one of the folders above it.
        paths = [name for name in (exc.filename2, exc.filename) if isinstance(name, str)]
        blocker = next(
            (found for path in paths if (found := _file_in_the_way(path, exc.errno == errno.EEXIST))), None
        )
        if blocker is None:
            return None
        if _same_path(blocker, output):
            return f"{output} is a file, not a folder"
        return f"cannot write to {output}: {blocker} is a file, not a folder"
    if exc.errno in _DENIED:
        return f"cannot write to {output}: permission denied"
    if exc.errno == errno.EROFS:
        return f"cannot write to {output}: read-only file system"
    if exc.errno in _FULL:
        return f"{_FULL[exc.errno]} {_where(exc, output)}"
    return None


def _where(exc: OSError, output: str) -> str:
    """The output, or the temporary folder when that is what filled up (object stores stage there)."""
    filename = exc.filename if isinstance(exc.filename, str) else ""
    temp = tempfile.gettempdir()
    if filename.startswith(temp.rstrip(os.sep) + os.sep) and "://" in output:
        return f"the temporary folder {temp} (downloads for {output} are staged there)"
    return output


def _file_in_the_way(path: str, itself: bool) -> str | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself), when that is not a folder."""
    current = path.removeprefix("file://")
    if not itself:
        current = os.path.dirname(current)
    while current:
        if os.path.lexists(current):
            return None if os.path.isdir(current) else current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None


def _same_path(path: str, output: str) -> bool:
    local = output.removeprefix("file://").rstrip("/") or "/"
    return os.path.abspath(path) == os.path.abspath(local)


# Where the stores put the last-modified time: local and memory ("mtime", "created"), s3fs
# ("LastModified"), adlfs ("last_modified"), gcsfs ("updated").
_MODIFIED_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "created")


def modified_at(info: Mapping[str, Any]) -> float | None:
    """When the file was last written (epoch seconds), or None when ``info`` does not say."""
    for name in _MODIFIED_FIELDS:
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None
