"""Claims on work in a shared output: two runs on the same DEST never process the same content.

A claim is a file created with exclusive create under ``DEST/.hy3d/claims/``: a hard link locally
(O_EXCL semantics, content complete), a conditional put on object stores (``mode="xb"``: s3fs sends
``If-None-Match: *``, gcsfs ``ifGenerationMatch=0``, adlfs commits with ``If-None-Match: *``; the
store refuses the second one), and a check-and-create under a process-wide lock on ``memory://``
(whose store is one dict per process and whose "xb" checks, then creates, without a lock). It is
removed when the run is done with it. A run that died leaves its claims behind: one whose owner
process is gone (same host) or whose lease ran out (any host) is taken over.

Claims are written by other clients, so they are never read through a client's listing cache
(s3fs, gcsfs and adlfs answer ``info``/``open``/``ls`` from a folder listing they hold, however old):
see :meth:`Storage.uncached`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from tasks.storage import STATE_FOLDER, Storage, modified_at, process_alive

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
