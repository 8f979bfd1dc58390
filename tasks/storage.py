"""Output storage on any fsspec URL, with all-or-nothing publishing.

A reader must never see a half-written ``mesh.glb`` or ``metadata.json``. Local file systems get
that from ``os.replace`` of a staging file in the same folder. Object stores (S3, GCS, Azure) have
no rename, but an object only becomes visible once its upload completes, so the staged local file
is uploaded straight to its final key.

Every method here is blocking I/O; async callers run them with ``asyncio.to_thread``, or, for a few
small files, with :meth:`Storage.small_io`.

The output store. Sections: storage, the prediction ledger (what was paid for), claims on work
shared between runs, and secrets kept out of everything stored or printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import mimetypes
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar

import fsspec
from fsspec import AbstractFileSystem
from pydantic import BaseModel, ValidationError

from tasks.errors import OutputNotWritableError, UnsafePathError

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


def utc_now() -> str:
    """Now, as every stored record writes it: ISO 8601, milliseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


# ==== The prediction ledger =======================================================================
#
# What was paid for, kept in the output storage: ``DEST/.hy3d/predictions/<content key>.json``.
#
# Write-ahead: an intent is recorded just before a submit is sent, replaced by the prediction id the
# moment the submit is accepted — before any waiting — so a run killed at any point can be re-run and
# resume polling the predictions it already paid for. A run killed while a submit was in flight leaves
# the intent behind: that submit may have been accepted, so the re-run does not resend it blindly.
# Prefect's cache record only exists once the submit task completes, and lives in result storage;
# this ledger lives next to the meshes, so whoever can write the output knows what was bought for it.

RETENTION = timedelta(days=7)  # WaveSpeed deletes predictions and outputs after 7 days


class LedgerEntry(BaseModel):
    content_key: str
    state: Literal["submitting", "submitted", "unknown"]
    prediction_id: str | None = None
    model: str
    api_root: str
    recorded_at: str
    reason: str | None = None  # for "unknown": why the outcome of the submit is not known
    inputs: dict[str, Any] = {}

    def age(self, now: datetime | None = None) -> timedelta:
        recorded = datetime.fromisoformat(self.recorded_at)
        return (now or datetime.now(UTC)) - recorded

    @property
    def expired(self) -> bool:
        return self.age() >= RETENTION


class PredictionLedger:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _parts(self, content_key: str) -> tuple[str, ...]:
        return (STATE_FOLDER, "predictions", f"{content_key}.json")

    def read(self, content_key: str) -> LedgerEntry | None:
        raw = self.storage.read_json(*self._parts(content_key))
        if raw is None:
            return None
        try:
            return LedgerEntry.model_validate(raw)
        except ValidationError:
            return None

    def _record(self, content_key: str, model: str, api_root: str, **details: Any) -> LedgerEntry:
        entry = LedgerEntry(
            content_key=content_key,
            model=model,
            api_root=api_root,
            recorded_at=datetime.now(UTC).isoformat(),
            **details,
        )
        self.storage.write_json(entry.model_dump(mode="json"), *self._parts(content_key))
        return entry

    def record_intent(self, content_key: str, model: str, api_root: str) -> LedgerEntry:
        return self._record(content_key, model, api_root, state="submitting")

    def forget(self, content_key: str) -> None:
        """The submit certainly was not accepted: nothing to remember."""
        path = self.storage.path(*self._parts(content_key))
        if self.storage.fs.exists(path):
            self.storage.fs.rm_file(path)

    def record_submitted(
        self, content_key: str, prediction_id: str, model: str, api_root: str, inputs: dict[str, Any]
    ) -> LedgerEntry:
        return self._record(
            content_key, model, api_root, state="submitted", prediction_id=prediction_id, inputs=inputs
        )

    def record_unknown(self, content_key: str, model: str, api_root: str, reason: str) -> LedgerEntry:
        return self._record(content_key, model, api_root, state="unknown", reason=reason)


# ==== Claims ======================================================================================
#
# Claims on work in a shared output: two runs on the same DEST never process the same content.
#
# A claim is a file created with exclusive create under ``DEST/.hy3d/claims/``: a hard link locally
# (O_EXCL semantics, content complete), a conditional put on object stores (``mode="xb"``: s3fs sends
# ``If-None-Match: *``, gcsfs ``ifGenerationMatch=0``, adlfs commits with ``If-None-Match: *``; the
# store refuses the second one), and a check-and-create under a process-wide lock on ``memory://``
# (whose store is one dict per process and whose "xb" checks, then creates, without a lock). It is
# removed when the run is done with it. A run that died leaves its claims behind: one whose owner
# process is gone (same host) or whose lease ran out (any host) is taken over.
#
# Claims are written by other clients, so they are never read through a client's listing cache
# (s3fs, gcsfs and adlfs answer ``info``/``open``/``ls`` from a folder listing they hold, however old):
# see :meth:`Storage.uncached`.

# A claim file that cannot be read (its writer died between create and write on a store without
# atomic create-with-content) is someone's only for this long after it was last modified.
UNREADABLE_CLAIM_GRACE_S = 60.0

# File systems whose whole store lives in this process: exclusive create is made atomic here.
_PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
_process_local_create = threading.Lock()


def _protocols(storage: Storage) -> frozenset[str]:
    protocol = storage.fs.protocol
    return frozenset((protocol,) if isinstance(protocol, str) else protocol)


@dataclass(frozen=True)
class ClaimHolder:
    run: str
    host: str
    pid: int
    expires_at: float

    def describe(self) -> str:
        return f"run {self.run} on {self.host} (pid {self.pid})"


class ClaimRegistry:
    def __init__(self, storage: Storage, run: str, lease_s: float) -> None:
        self.storage = storage
        self.me = ClaimHolder(run=run, host=socket.gethostname(), pid=os.getpid(), expires_at=0.0)
        self.lease_s = lease_s
        self.held: set[str] = set()

    def _path(self, key: str) -> str:
        return self.storage.path(STATE_FOLDER, "claims", f"{key}.json")

    def _holder(self, key: str) -> ClaimHolder | None:
        try:
            with self.storage.fs.open(self.storage.uncached(self._path(key)), "rb") as handle:
                raw = json.loads(handle.read())
            return ClaimHolder(str(raw["run"]), str(raw["host"]), int(raw["pid"]), float(raw["expires_at"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return ClaimHolder("unknown", "unknown", -1, self._modified_at(key) + UNREADABLE_CLAIM_GRACE_S)

    def _modified_at(self, key: str) -> float:
        """When the claim file was last written (epoch seconds); now when the store cannot say."""
        try:
            info = self.storage.fs.info(self.storage.uncached(self._path(key)))
        except FileNotFoundError:
            return 0.0
        modified = modified_at(info)
        return time.time() if modified is None else modified

    def _is_stale(self, holder: ClaimHolder) -> bool:
        if holder.expires_at < time.time():
            return True
        return holder.host == self.me.host and holder.pid != self.me.pid and not process_alive(holder.pid)

    def try_claim(self, key: str) -> ClaimHolder | None:
        """None when the claim is ours now; otherwise who holds it."""
        if key in self.held:
            return None
        path = self._path(key)
        self.storage.fs.makedirs(self.storage.path(STATE_FOLDER, "claims"), exist_ok=True)
        body = json.dumps(
            {
                "run": self.me.run,
                "host": self.me.host,
                "pid": self.me.pid,
                "expires_at": time.time() + self.lease_s,
            }
        ).encode()
        for _ in range(3):
            try:
                self._create_exclusive(path, body)
            except FileExistsError:
                holder = self._holder(key)
                if holder is not None and not self._is_stale(holder):
                    return holder
                if holder is not None:
                    with contextlib.suppress(FileNotFoundError):  # another run may take it over too
                        self.storage.fs.rm_file(path)  # take over a dead run's claim
                continue
            self.held.add(key)
            return None
        return self._holder(key) or ClaimHolder("unknown", "unknown", -1, 0.0)

    def _create_exclusive(self, path: str, body: bytes) -> None:
        """Create ``path`` holding ``body`` only if it does not exist (FileExistsError otherwise)."""
        if self.storage.is_local:
            # Write aside, then hard-link into place: the claim appears complete or not at all.
            staged = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(staged, "wb") as handle:
                handle.write(body)
            try:
                os.link(staged, path)
            finally:
                os.remove(staged)
            return
        if _protocols(self.storage) & _PROCESS_LOCAL_PROTOCOLS:
            with _process_local_create, self.storage.fs.open(path, "xb") as handle:
                handle.write(body)
            return
        # Object stores: a conditional put creates the object with its content, or fails.
        with self.storage.fs.open(path, "xb") as handle:
            handle.write(body)

    def sweep(self) -> int:
        """Remove claims left by runs that died; done once at the start of a run."""
        folder = self.storage.path(STATE_FOLDER, "claims")
        try:
            paths = self.storage.fs.ls(self.storage.uncached(folder), detail=False)
        except FileNotFoundError:
            return 0
        removed = 0
        for path in paths:
            key = str(path).rsplit("/", 1)[-1].removesuffix(".json")
            holder = self._holder(key)
            if holder is not None and self._is_stale(holder):
                with contextlib.suppress(FileNotFoundError):
                    self.storage.fs.rm_file(self._path(key))
                    removed += 1
        return removed

    def release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            with contextlib.suppress(FileNotFoundError):
                self.storage.fs.rm_file(self._path(key))

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)


# ==== Secrets =====================================================================================
#
# Keep secrets out of everything stored or printed.
#
# The client never sends the API key anywhere but the API, yet a server may echo it back (an error
# text quoting ``Bearer <key>``), and from there it would reach metadata, summaries, the gallery, logs
# and the Prefect database. Every secret the process holds is registered here when it is loaded, and
# text that comes from a server is redacted before anything keeps it.

MASK = "***"
_MIN_LENGTH = 6  # shorter values would mask ordinary words; no real key is that short

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    if value and len(value.strip()) >= _MIN_LENGTH:
        _secrets.add(value.strip())


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):  # a key that starts another is masked after it
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """``value`` with every string in it (keys and nested values too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message once it is formatted (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_FILTER = RedactingFilter()


def redact_logs(*loggers: logging.Logger) -> None:
    """Put the filter on every handler of ``loggers`` (the root logger and Prefect's by default):
    a filter on a handler sees the records of every child logger, a filter on a logger does not."""
    for logger in loggers or (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
