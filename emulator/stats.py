"""Thread-safe counters of everything the emulator saw, for tests to assert on.

The server mutates them on its event-loop thread; tests read them from theirs. Every public reader takes
the lock and returns a copy or a plain number.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit


def bytes_key(data: bytes) -> str:
    """`submits_by_input` key of an input image that was uploaded to the emulator."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def url_key(url: str) -> str:
    """`submits_by_input` key of an input image given by a foreign URL."""
    return "url:" + url


def prompt_key(prompt: str) -> str:
    """`submits_by_input` key of a text-to-3d submit."""
    return "prompt:" + prompt


def _output_name(url_or_name: str) -> str:
    return urlsplit(url_or_name).path.rsplit("/", 1)[-1]


class EmulatorStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.submits_received = 0
        self.submits_accepted = 0
        self.submits_by_input: Counter[str] = Counter()
        self.submits_by_model: Counter[str] = Counter()
        self.billed_usd = 0.0
        self.uploads: Counter[str] = Counter()
        self.uploaded_bytes = 0
        self.upload_puts_with_authorization = 0
        self.polls_by_prediction: Counter[str] = Counter()
        self.downloads_by_output: Counter[str] = Counter()
        self.downloads_truncated = 0
        self.auth_failures = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.processing = 0
        self.peak_processing = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.failures_by_code: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.webhooks: dict[str, str] = {}
        self.webhook_attempts: Counter[str] = Counter()
        self.webhook_delivered_at: dict[str, float] = {}  # answered 2xx by the receiver
        # Timelines (epoch seconds, time.time(), comparable with other processes on this machine):
        # when each prediction was accepted, when it completed, and when a poll first answered
        # `completed` -- the client cannot have noticed the completion before that poll.
        self.accepted_at: dict[str, float] = {}
        self.started_at: dict[str, float] = {}  # left the account's queue: status `processing`
        self.completed_at: dict[str, float] = {}
        self.first_completed_poll_at: dict[str, float] = {}
        self.polls_after_completed: Counter[str] = Counter()
        self.first_poll_at: dict[str, float] = {}
        self.first_download_at: dict[str, float] = {}  # by prediction id, of any of its outputs
        self._owner_of_output: dict[str, str] = {}

    # ---- writers (called by the server) ------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._clear()

    def record_request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1

    def record_submit_received(self) -> None:
        with self._lock:
            self.submits_received += 1

    def record_auth_failure(self) -> None:
        with self._lock:
            self.auth_failures += 1

    def record_accepted(
        self, model: str, input_key: str, price: float, webhook: str | None, pid: str
    ) -> None:
        with self._lock:
            self.submits_accepted += 1
            self.submits_by_input[input_key] += 1
            self.submits_by_model[model] += 1
            self.billed_usd = round(self.billed_usd + price, 9)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.accepted_at[pid] = time.time()
            if webhook:
                self.webhooks[pid] = webhook

    def record_processing(self, delta: int, prediction_id: str | None = None) -> None:
        with self._lock:
            self.processing += delta
            self.peak_processing = max(self.peak_processing, self.processing)
            if delta > 0 and prediction_id is not None:
                self.started_at.setdefault(prediction_id, time.time())

    def record_terminal(self, status: str | None, code: int = 0) -> None:
        """A prediction left the in-flight set with this status (`failed` with its code), or None
        when cancelled at shutdown/reset (counted nowhere)."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            if status == "completed":
                self.completed += 1
            elif status == "failed":
                self.failed += 1
                self.failures_by_code[code] += 1
            elif status == "cancelled":
                self.cancelled += 1
            elif status == "timeout":
                self.timed_out += 1

    def record_completed(self, prediction_id: str, outputs: list[str] | tuple[str, ...] = ()) -> None:
        """The prediction's status just became `completed` with these outputs (URLs or CDN names)."""
        with self._lock:
            self.completed_at.setdefault(prediction_id, time.time())
            for url in outputs:
                self._owner_of_output[_output_name(url)] = prediction_id

    def record_output_links(self, prediction_id: str, names: list[str]) -> None:
        """The prediction's outputs got further CDN names (renewed links)."""
        with self._lock:
            for name in names:
                self._owner_of_output[name] = prediction_id

    def record_poll_answer(self, prediction_id: str, status: str) -> None:
        """A poll is answered with the prediction's `status` (after faults: only real answers)."""
        with self._lock:
            self.first_poll_at.setdefault(prediction_id, time.time())
            if status != "completed":
                return
            if prediction_id in self.first_completed_poll_at:
                self.polls_after_completed[prediction_id] += 1
            else:
                self.first_completed_poll_at[prediction_id] = time.time()

    def record_webhook_attempt(self, prediction_id: str) -> None:
        with self._lock:
            self.webhook_attempts[prediction_id] += 1

    def record_webhook_delivered(self, prediction_id: str) -> None:
        with self._lock:
            self.webhook_delivered_at.setdefault(prediction_id, time.time())

    def record_upload(self, route: str, size: int) -> None:
        with self._lock:
            self.uploads[route] += 1
            self.uploaded_bytes += size

    def record_put_with_authorization(self) -> None:
        with self._lock:
            self.upload_puts_with_authorization += 1

    def record_poll(self, prediction_id: str) -> None:
        with self._lock:
            self.polls_by_prediction[prediction_id] += 1

    def record_download(self, name: str, truncated: bool) -> None:
        with self._lock:
            self.downloads_by_output[name] += 1
            owner = self._owner_of_output.get(name)
            if owner is not None:
                self.first_download_at.setdefault(owner, time.time())
            if truncated:
                self.downloads_truncated += 1

    def record_fault(self, name: str) -> None:
        with self._lock:
            self.faults[name] += 1

    # ---- readers (for tests) -----------------------------------------------------------------------
    def _count(self, counter: str, key: str) -> int:
        """`key`'s count in the Counter attribute named `counter`, looked up under the lock because
        reset() replaces the Counters."""
        with self._lock:
            counts: Counter[str] = getattr(self, counter)
            return counts[key]

    def polls_for(self, prediction_id: str) -> int:
        return self._count("polls_by_prediction", prediction_id)

    @property
    def total_polls(self) -> int:
        with self._lock:
            return sum(self.polls_by_prediction.values())

    def submits_for_image_bytes(self, data: bytes) -> int:
        """Accepted submits whose (primary) image was these bytes uploaded to the emulator."""
        return self._count("submits_by_input", bytes_key(data))

    def submits_for_url(self, url: str) -> int:
        """Accepted submits whose (primary) image was this foreign (non-emulator) URL."""
        return self._count("submits_by_input", url_key(url))

    def submits_for_prompt(self, prompt: str) -> int:
        """Accepted text-to-3d submits of this prompt."""
        return self._count("submits_by_input", prompt_key(prompt))

    def downloads_for(self, output_url_or_name: str) -> int:
        """Downloads (complete or truncated) of one output, by its URL or file name."""
        return self._count("downloads_by_output", _output_name(output_url_or_name))

    @property
    def total_downloads(self) -> int:
        with self._lock:
            return sum(self.downloads_by_output.values())

    @property
    def total_uploads(self) -> int:
        """Files stored: binary uploads plus completed presigned PUTs (not the upload-URL requests)."""
        with self._lock:
            return self.uploads["binary"] + self.uploads["put"]

    def requests_for(self, method: str, route: str, status: int | None = None) -> int:
        """Requests by method and route template (e.g. "/api/v3/predictions/{prediction_id}/result"),
        optionally only those answered with `status`."""
        with self._lock:
            return sum(
                n
                for (m, r, s), n in self.requests.items()
                if m == method and r == route and (status is None or s == status)
            )

    def completion_lags(self) -> dict[str, float]:
        """Seconds from `completed` to when the client first learned of it -- the first poll that
        answered `completed` or the webhook delivery its receiver acknowledged, whichever came
        first -- per prediction the client learned of (how late the client noticed)."""
        with self._lock:
            return self._lags()

    def _noticed_at(self) -> dict[str, float]:
        noticed = dict(self.first_completed_poll_at)
        for pid, delivered in self.webhook_delivered_at.items():
            if pid in self.completed_at:  # a failed prediction's delivery notices no completion
                noticed[pid] = min(delivered, noticed.get(pid, delivered))
        return noticed

    def _lags(self) -> dict[str, float]:
        noticed = self._noticed_at()
        return {
            pid: max(0.0, noticed[pid] - done) for pid, done in self.completed_at.items() if pid in noticed
        }

    def _lag_summary(self) -> dict[str, float | int | None]:
        lags = sorted(self._lags().values())
        if not lags:
            return {"count": 0, "mean": None, "p50": None, "p90": None, "max": None}

        def quantile(q: float) -> float:
            return lags[min(len(lags) - 1, round(q * (len(lags) - 1)))]

        return {
            "count": len(lags),
            "mean": statistics.fmean(lags),
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "max": lags[-1],
        }

    def fault_count(self, name: str) -> int:
        return self._count("faults", name)

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-ready values (request keys read "METHOD route status")."""
        with self._lock:
            return {
                "requests": {f"{m} {r} {s}": n for (m, r, s), n in sorted(self.requests.items())},
                "submits_received": self.submits_received,
                "submits_accepted": self.submits_accepted,
                "submits_by_input": dict(self.submits_by_input),
                "submits_by_model": dict(self.submits_by_model),
                "billed_usd": self.billed_usd,
                "uploads": dict(self.uploads),
                "uploaded_bytes": self.uploaded_bytes,
                "upload_puts_with_authorization": self.upload_puts_with_authorization,
                "polls_by_prediction": dict(self.polls_by_prediction),
                "total_polls": sum(self.polls_by_prediction.values()),
                "downloads_by_output": dict(self.downloads_by_output),
                "downloads_truncated": self.downloads_truncated,
                "auth_failures": self.auth_failures,
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "processing": self.processing,
                "peak_processing": self.peak_processing,
                "completed": self.completed,
                "failed": self.failed,
                "cancelled": self.cancelled,
                "timed_out": self.timed_out,
                "failures_by_code": {str(k): v for k, v in self.failures_by_code.items()},
                "faults": dict(self.faults),
                "webhooks": dict(self.webhooks),
                "webhook_attempts": dict(self.webhook_attempts),
                "webhook_delivered_at": dict(self.webhook_delivered_at),
                "accepted_at": dict(self.accepted_at),
                "started_at": dict(self.started_at),
                "completed_at": dict(self.completed_at),
                "first_completed_poll_at": dict(self.first_completed_poll_at),
                "noticed_at": self._noticed_at(),
                "polls_after_completed": dict(self.polls_after_completed),
                "first_poll_at": dict(self.first_poll_at),
                "first_download_at": dict(self.first_download_at),
                "completion_lag_s": self._lag_summary(),
            }
