"""Webhook deliveries and the webhook secret (contract: "Webhook deliveries").

A prediction submitted with `?webhook=<url>` (or body `webhook_url`) is POSTed there once it is
completed or failed: the bare prediction object, signed with the account's webhook secret, retried
up to `webhook_retries` times when the receiver does not answer 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import ssl
import time
import uuid
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from emulator.answers import prediction_json
from emulator.responses import envelope, require_auth
from emulator.routing import RouteGroup, route
from emulator.state import EmulatorState
from emulator.store import Prediction

DELIVERY_TIMEOUT_S = 10.0


def signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """`v3,<hex>`: HMAC-SHA256, keyed by the secret minus `whsec_`, over "{id}.{timestamp}.{body}"."""
    key = secret.removeprefix("whsec_").encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v3," + hmac.new(key, signed, hashlib.sha256).hexdigest()


async def deliver(state: EmulatorState, prediction: Prediction, url: str) -> None:
    """POST the terminal prediction to `url`; the same webhook-id on every attempt."""
    config, stats = state.config, state.stats
    body = json.dumps(prediction_json(state, prediction), separators=(",", ":")).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    for attempt in range(1 + max(0, config.webhook_retries)):
        if attempt:
            await asyncio.sleep(config.webhook_retry_s * 2 ** (attempt - 1))
        stats.record_webhook_attempt(prediction.id)
        if state.chance(config.webhook_loss_rate):
            continue  # lost on the way: the receiver never sees it
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature(config.webhook_secret, webhook_id, timestamp, body),
        }
        try:
            status = await asyncio.wait_for(_post(url, headers, body), DELIVERY_TIMEOUT_S)
        except (OSError, ValueError, TimeoutError):
            continue
        if 200 <= status < 300:
            stats.record_webhook_delivered(prediction.id)
            return


async def _post(url: str, headers: dict[str, str], body: bytes) -> int:
    """One POST on its own connection; the answer's status. Not httpx: one pool shared by a
    thousand deliveries at once costs the emulator seconds of CPU per second (httpcore's pool
    scans its connections on every request), which is not the latency being emulated."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ssl.create_default_context() if secure else None
    )
    try:
        head = [f"POST {target} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()  # "HTTP/1.1 204 No Content"
        fields = status_line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise ValueError("no HTTP status line in the answer")
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class WebhookRoutes(RouteGroup):
    @route("/api/v3/webhook/secret", "GET")
    async def secret(self, request: Request) -> Response:
        require_auth(request, self.state.config, self.state.stats)
        return envelope({"secret": self.state.config.webhook_secret})
