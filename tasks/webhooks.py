"""Webhook mode: WaveSpeed POSTs each finished prediction to a public URL, so the client learns of
it at once instead of at its next poll (contract: "Webhook deliveries").

:class:`WebhookReceiver` is a small HTTP server on its own thread. It accepts a delivery only with
a valid signature (HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed by the
account's webhook secret minus ``whsec_``) and a timestamp within :data:`TOLERANCE_S`, and keeps
it for the wait of a prediction this client submitted with the webhook. Polls are the safety net:
while deliveries arrive, they are put off by a grace period and serve only to catch a lost one;
after :data:`MISSES_BEFORE_DISTRUST` predictions in a row were found by a poll instead, the
receiver is no longer trusted and polls go back to their usual schedule until a delivery comes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from tasks.errors import WebhookBodyError, WebhookRejected
from tasks.models import Prediction
from tasks.polling import Waiter, new_waiter, wake

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger("hy3d.webhooks")

TOLERANCE_S = 300.0  # deliveries signed longer ago (or ahead) than this are refused (the docs' rule)
MISSES_BEFORE_DISTRUST = 3
MAX_BODY_BYTES = 4 * 1024 * 1024  # a prediction object is a few kB
EARLY_KEPT = 1024  # deliveries that came before their submit's answer was read (see watch)
START_TIMEOUT_S = 10.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def expected_signature(secret: SecretStr, webhook_id: str, timestamp: str, body: bytes) -> str:
    key = secret.get_secret_value().removeprefix("whsec_").encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def verify_delivery(
    secret: SecretStr, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> Prediction:
    """The delivered prediction, or :class:`WebhookRejected` saying why (never with the secret)."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and signatures):
        raise WebhookRejected("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise WebhookRejected("webhook-timestamp is not a whole number of seconds")
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        raise WebhookRejected(f"webhook-timestamp more than {TOLERANCE_S:g} s away")
    wanted = expected_signature(secret, webhook_id, timestamp, body).encode()
    # "v3,<hex>", possibly several space-separated (key rotation): one match is enough. Compared
    # as bytes: compare_digest refuses str with characters beyond ASCII, which anyone can send.
    candidates = [
        value.encode("latin-1", "replace")
        for scheme, _, value in (part.partition(",") for part in signatures.split())
        if scheme == "v3"
    ]
    if not any(hmac.compare_digest(wanted, candidate) for candidate in candidates):
        raise WebhookRejected("signature does not match")
    try:
        return Prediction.model_validate(json.loads(body))
    except (ValueError, TypeError) as exc:
        raise WebhookBodyError(f"signed body is not a prediction: {type(exc).__name__}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"webhook listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class WebhookReceiver:
    """Receives deliveries on ``listen`` for predictions registered with :meth:`watch`.

    Thread-safe: deliveries arrive on the receiver's thread; waits may run on any event loop."""

    def __init__(self, secret: SecretStr, listen: str, *, poll_grace_s: float) -> None:
        self._secret = secret
        self.host, self.port = parse_listen(listen)
        self.poll_grace_s = poll_grace_s
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._delivered: dict[str, tuple[Prediction, float]] = {}  # with its arrival (monotonic)
        self._early: dict[str, tuple[Prediction, float]] = {}
        self._waiters: dict[str, list[Waiter]] = {}
        self._deliveries = 0
        self._misses = 0
        self._rejections = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver(listen={self.host}:{self.port}, secret=SecretStr('**********'))"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        import uvicorn  # webhook mode only

        config = uvicorn.Config(self, log_level="warning", access_log=False, lifespan="off")
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="hy3d-webhooks", daemon=True
        )
        self._thread.start()
        give_up = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > give_up:
                self.stop()
                raise OSError(f"webhook receiver did not start on {self.host}:{self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    # -- the client's side -------------------------------------------------------------------

    @property
    def trusted(self) -> bool:
        """Deliveries arrive: polls may be put off by :attr:`poll_grace_s`."""
        with self._lock:
            return self._deliveries > 0 and self._misses < MISSES_BEFORE_DISTRUST

    def watch(self, prediction_id: str) -> None:
        """Keep a delivery for this prediction (submitted with the webhook) until :meth:`unwatch`.
        One that came already (a prediction that failed at once can be delivered before its
        submit's answer is read) is taken over."""
        with self._lock:
            self._watched.add(prediction_id)
            early = self._early.pop(prediction_id, None)
            if early is not None:
                self._delivered[prediction_id] = early
                self._deliveries += 1
                self._misses = 0

    def watches(self, prediction_id: str) -> bool:
        with self._lock:
            return prediction_id in self._watched

    def unwatch(self, prediction_id: str) -> None:
        """Forget the prediction: its wait is over (its own waiter cancelled), or it never had one."""
        with self._lock:
            self._watched.discard(prediction_id)
            self._delivered.pop(prediction_id, None)
            self._waiters.pop(prediction_id, None)

    def take(self, prediction_id: str) -> tuple[Prediction, float] | None:
        """The delivered prediction and when it arrived (monotonic), if it has."""
        with self._lock:
            return self._delivered.pop(prediction_id, None)

    def waiter(self, prediction_id: str) -> asyncio.Future[None]:
        """A future on the running loop, resolved when a delivery for the prediction arrives."""
        waiter = new_waiter()
        with self._lock:
            if prediction_id in self._delivered:
                waiter[1].set_result(None)
            else:
                self._waiters.setdefault(prediction_id, []).append(waiter)
        return waiter[1]

    def missed(self) -> None:
        """A poll found this prediction finished although deliveries were trusted to tell."""
        with self._lock:
            self._misses += 1
            distrusted = self._misses == MISSES_BEFORE_DISTRUST
        if distrusted:
            logger.warning(
                "%d finished predictions in a row were found by polls, not webhook deliveries: "
                "polling on the usual schedule until a delivery arrives at %s:%d",
                MISSES_BEFORE_DISTRUST,
                self.host,
                self.port,
            )

    def _delivered_now(self, prediction: Prediction) -> None:
        if not prediction.is_terminal:
            return
        arrival = (prediction, time.monotonic())
        with self._lock:
            if prediction.id not in self._watched:
                # Too early, or for no wait of this client (late, replayed, another run's): it
                # says nothing about whether deliveries reach the waits.
                self._early[prediction.id] = arrival
                while len(self._early) > EARLY_KEPT:
                    del self._early[next(iter(self._early))]
                return
            self._deliveries += 1
            self._misses = 0
            self._delivered[prediction.id] = arrival
            waiters = self._waiters.pop(prediction.id, [])
        wake(waiters)

    def _rejected(self, reason: str) -> None:
        with self._lock:
            self._rejections += 1
            first = self._rejections == 1
        # Anyone can POST to a public URL: say it once, then quietly.
        (logger.warning if first else logger.debug)("webhook delivery refused: %s", reason)

    # -- the HTTP side (ASGI) ----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 413)
                return
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            prediction = verify_delivery(self._secret, headers, bytes(body))
        except WebhookRejected as exc:
            self._rejected(str(exc))
            await _answer(send, 400 if isinstance(exc, WebhookBodyError) else 401)
            return
        except Exception as exc:  # whatever a stranger sends: no traceback per request
            self._rejected(f"unreadable request: {type(exc).__name__}")
            await _answer(send, 400)
            return
        self._delivered_now(prediction)
        await _answer(send, 204)


async def _answer(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


__all__ = ["WebhookReceiver", "parse_listen", "verify_delivery"]
