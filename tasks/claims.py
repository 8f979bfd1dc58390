"""Claims on work in a shared output: two runs on the same DEST never process the same content.

A claim is a file created with exclusive create (``mode="xb"``: O_EXCL locally, a conditional
put on object stores) under ``DEST/.hy3d/claims/``. It is removed when the run is done with it.
A run that died leaves its claims behind: one whose owner process is gone (same host) or whose
lease ran out (any host) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass

from tasks.ledger import STATE_FOLDER
from tasks.storage import Storage


@dataclass(frozen=True)
class ClaimHolder:
    run: str
    host: str
    pid: int
    expires_at: float

    def describe(self) -> str:
        return f"run {self.run} on {self.host} (pid {self.pid})"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            with self.storage.fs.open(self._path(key), "rb") as handle:
                raw = json.loads(handle.read())
            return ClaimHolder(str(raw["run"]), str(raw["host"]), int(raw["pid"]), float(raw["expires_at"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # Unreadable (e.g. caught mid-write by a reader on a store without atomic create):
            # treat as held for now, it will be readable or gone on the next run.
            return ClaimHolder("unknown", "unknown", -1, time.time() + 60)

    def _is_stale(self, holder: ClaimHolder) -> bool:
        if holder.expires_at < time.time():
            return True
        return holder.host == self.me.host and holder.pid != self.me.pid and not _process_alive(holder.pid)

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
                with self.storage.fs.open(path, "xb") as handle:
                    handle.write(body)
            except FileExistsError:
                holder = self._holder(key)
                if holder is not None and not self._is_stale(holder):
                    return holder
                if holder is not None:
                    self.storage.fs.rm_file(path)  # take over a dead run's claim
                continue
            self.held.add(key)
            return None
        return self._holder(key) or ClaimHolder("unknown", "unknown", -1, 0.0)

    def release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            with contextlib.suppress(FileNotFoundError):
                self.storage.fs.rm_file(self._path(key))

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
