"""Webhook mode: the emulator delivers signed finished predictions; the client's receiver ends waits
with them and polls only to catch lost ones. Real sockets throughout."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from emulator import EmulatorServer
from tasks.client import WaveSpeedClient, WaveSpeedSettings
from tasks.errors import WebhookBodyError, WebhookRejected
from tasks.webhooks import (
    MISSES_BEFORE_DISTRUST,
    WebhookReceiver,
    parse_listen,
    verify_delivery,
)
from tests.conftest import run_flow
from tests.test_client import BALL, MODEL
from tests.test_flow import assert_landed, distinct_images, write_csv

SECRET = "whsec_dGVzdC1zZWNyZXQ"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The contract's formula, written out here independently of both implementations."""
    key = secret[len("whsec_") :].encode()
    return "v3," + hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def webhook_settings(emulator: EmulatorServer, **changes: Any) -> WaveSpeedSettings:
    port = free_port()
    values: dict[str, Any] = {
        "api_key": emulator.api_key,
        "base_url": emulator.url,
        "poll_initial_interval_s": 0.5,
        "poll_max_interval_s": 2.0,
        "webhook_url": f"http://127.0.0.1:{port}/hooks/wavespeed",
        "webhook_listen": f"127.0.0.1:{port}",
        "webhook_poll_grace_s": 5.0,
    }
    values.update(changes)
    return WaveSpeedSettings(**values)


async def submit_and_wait(settings: WaveSpeedSettings, count: int) -> tuple[list[str], list[str]]:
    """Submit ``count`` predictions at once, wait for all; (ids, statuses)."""
    async with WaveSpeedClient(settings) as client:
        url = await client.upload(BALL, "ball.png", "image/png")
        ids = [(await client.submit(MODEL, {"image": url})).id for _ in range(count)]
        done = await asyncio.gather(*(client.wait(pid, model=MODEL, timeout_s=60) for pid in ids))
        return ids, [p.status for p in done]


# -- the signature, as a pure function --------------------------------------------------------------


def test_a_delivery_is_accepted_only_with_its_signature_and_a_fresh_timestamp() -> None:
    body = json.dumps({"id": "abc", "status": "completed", "outputs": ["https://cdn/x.glb"]}).encode()
    now = time.time()
    stamp = str(int(now))
    good = {
        "webhook-id": "msg_1",
        "webhook-timestamp": stamp,
        "webhook-signature": sign(SECRET, "msg_1", stamp, body),
    }
    secret = SecretStr(SECRET)

    assert verify_delivery(secret, good, body, now).outputs == ["https://cdn/x.glb"]
    # Several signatures (key rotation): one match is enough.
    rotated = {**good, "webhook-signature": "v3,00ff " + good["webhook-signature"]}
    assert verify_delivery(secret, rotated, body, now).id == "abc"

    refused = {
        "tampered body": (good, body.replace(b"abc", b"abd")),
        "other secret": ({**good, "webhook-signature": sign("whsec_other", "msg_1", stamp, body)}, body),
        "other id": ({**good, "webhook-id": "msg_2"}, body),
        "missing signature": ({k: v for k, v in good.items() if k != "webhook-signature"}, body),
        "stale": (good, body),
        "other scheme": ({**good, "webhook-signature": "v1," + good["webhook-signature"][3:]}, body),
        "not ASCII": ({**good, "webhook-signature": "v3,\xe9"}, body),
        "nan timestamp": ({**good, "webhook-timestamp": "nan"}, body),
    }
    for case, (headers, payload) in refused.items():
        at = now + 301 if case == "stale" else now
        with pytest.raises(WebhookRejected) as caught:
            verify_delivery(secret, headers, payload, at)
        assert not isinstance(caught.value, WebhookBodyError), case
        assert "dGVzdC1zZWNyZXQ" not in str(caught.value), case
    # Signed but not a prediction: a different answer (400), since resending cannot help.
    junk = b"[1, 2]"
    signed_junk = {**good, "webhook-signature": sign(SECRET, "msg_1", stamp, junk)}
    with pytest.raises(WebhookBodyError):
        verify_delivery(secret, signed_junk, junk, now)


def test_listen_addresses() -> None:
    assert parse_listen("0.0.0.0:8787") == ("0.0.0.0", 8787)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="host:port"):
        parse_listen("8787x")


# -- the emulator's deliveries ---------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail_first`` deliveries, then 204; records every one."""

    received: list[tuple[dict[str, str], bytes]]
    fail_first: int

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(self.received) <= self.fail_first else 204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"received": [], "fail_first": 1})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_emulator_posts_the_signed_prediction_and_retries_until_acknowledged(
    emulator: EmulatorServer, recorder: tuple[str, type[_Recorder]]
) -> None:
    url, handler = recorder
    emulator.config.webhook_retry_s = 0.1
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as api:
        secret = api.get("/api/v3/webhook/secret").json()["data"]["secret"]
        assert secret.startswith("whsec_")
        image = api.post("/api/v3/media/upload/binary", files={"file": ("b.png", BALL, "image/png")})
        pid = api.post(
            f"/api/v3/{MODEL}", params={"webhook": url}, json={"image": image.json()["data"]["download_url"]}
        ).json()["data"]["id"]
        give_up = time.monotonic() + 10
        while len(handler.received) < 2 and time.monotonic() < give_up:
            time.sleep(0.05)
        time.sleep(0.5)  # a third attempt after the 204 would come 0.2 s after the second
        polled = api.get(f"/api/v3/predictions/{pid}/result").json()["data"]
        assert api.get("/api/v3/webhook/secret", headers={"Authorization": "Bearer wrong"}).status_code == 401

    assert len(handler.received) == 2  # the first answered 500, the retry 204: no third
    (first_headers, _), (headers_2, body_2) = handler.received
    assert first_headers["webhook-id"] == headers_2["webhook-id"]  # one message, delivered twice
    for got_headers, body in handler.received:
        expected = sign(secret, got_headers["webhook-id"], got_headers["webhook-timestamp"], body)
        assert got_headers["webhook-signature"] == expected
        assert abs(int(got_headers["webhook-timestamp"]) - time.time()) < 30
    delivered = json.loads(body_2)
    assert "code" not in delivered or delivered["code"] == 0  # the bare prediction, no envelope
    assert delivered["id"] == pid and delivered["status"] == "completed"
    assert delivered["outputs"] == polled["outputs"]
    stats = emulator.stats.snapshot()
    assert stats["webhook_attempts"] == {pid: 2}
    assert pid in stats["webhook_delivered_at"]
    assert (
        "dGVzdC" not in json.dumps(emulator.config.public_dict())
        and emulator.config.public_dict()["webhook_secret"] == "***"
    )


# -- the client ------------------------------------------------------------------------------------


def test_deliveries_end_the_waits_without_polls(emulator: EmulatorServer) -> None:
    """Once a delivery has arrived, predictions are not polled at all: each wait ends with its
    delivery, outputs included."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 1.5, 0.3, 0
    settings = webhook_settings(emulator)

    async def go() -> tuple[list[str], list[str]]:
        async with WaveSpeedClient(settings) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            first = await client.submit(MODEL, {"image": url})  # its delivery proves the pipe
            await client.wait(first.id, model=MODEL, timeout_s=30)
            ids = [(await client.submit(MODEL, {"image": url})).id for _ in range(20)]
            done = await asyncio.gather(*(client.wait(pid, model=MODEL, timeout_s=60) for pid in ids))
            assert all(p.outputs and p.outputs[0].endswith(".glb") for p in done)
            return ids, [p.status for p in done]

    ids, statuses = asyncio.run(go())

    assert statuses == ["completed"] * 20
    stats = emulator.stats.snapshot()
    assert set(ids) <= set(stats["webhook_delivered_at"])
    assert all(stats["webhooks"][pid] == settings.webhook_url for pid in ids)
    assert [emulator.stats.polls_for(pid) for pid in ids] == [0] * 20
    lags = [emulator.stats.completion_lags()[pid] for pid in ids]
    assert statistics.mean(lags) < 0.3, lags  # polls 0.5 s apart would average ~0.4 s, plus load


def test_a_cold_first_wave_in_webhook_mode_polls_only_with_its_scouts(emulator: EmulatorServer) -> None:
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 1.5, 0.3, 0
    settings = webhook_settings(emulator)

    ids, statuses = asyncio.run(submit_and_wait(settings, 20))

    assert statuses == ["completed"] * 20
    assert set(emulator.stats.snapshot()["webhook_delivered_at"]) == set(ids)
    polled = [pid for pid in ids if emulator.stats.polls_for(pid)]
    assert len(polled) < 10, polled  # without deliveries every one is polled at least once


def test_a_cancelled_wait_keeps_nothing_and_early_deliveries_are_not_lost(emulator: EmulatorServer) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 0.5, 0.0
    settings = webhook_settings(emulator)

    async def go() -> None:
        async with WaveSpeedClient(settings) as client:
            receiver = client.webhooks
            assert isinstance(receiver, WebhookReceiver)
            url = await client.upload(BALL, "ball.png", "image/png")
            prediction = await client.submit(MODEL, {"image": url})
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.wait(prediction.id, model=MODEL), 0.1)
            assert not receiver.watches(prediction.id)
            assert receiver._waiters == {} and receiver._delivered == {}

            # A delivery that comes before its submit's answer was read is kept for the wait.
            late = await client.submit(MODEL, {"image": url})
            receiver.unwatch(late.id)  # as if the answer had not been read yet
            await asyncio.sleep(1.0)  # delivered meanwhile
            polls_before = emulator.stats.polls_for(late.id)
            receiver.watch(late.id)
            done = await client.wait(late.id, model=MODEL)
            assert done.status == "completed" and emulator.stats.polls_for(late.id) == polls_before

    asyncio.run(go())


def test_lost_deliveries_are_caught_by_polls(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every delivery attempt lost: the receiver is never trusted, predictions are polled as
    without webhooks and every one completes."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 0.5, 0.1, 0
    emulator.config.webhook_loss_rate = 1.0
    settings = webhook_settings(emulator)

    ids, statuses = asyncio.run(submit_and_wait(settings, 8))

    assert statuses == ["completed"] * 8
    assert emulator.stats.snapshot()["webhook_delivered_at"] == {}
    assert all(emulator.stats.polls_for(pid) >= 1 for pid in ids)
    assert max(emulator.stats.completion_lags().values()) < 3.0  # not put off by the 5 s grace


def test_deliveries_that_stop_arriving_switch_polls_back(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries arrive, then are all lost: polls are put off by the grace period while the
    receiver is trusted; after a few predictions found by polls instead, it says so and polls
    on the usual schedule again."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 0.3, 0.05, 0
    emulator.config.webhook_retries = 0
    settings = webhook_settings(emulator, webhook_poll_grace_s=3.0)

    async def go() -> list[float]:
        async with WaveSpeedClient(settings) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            for _ in range(3):  # trusted: deliveries arrive
                await client.wait((await client.submit(MODEL, {"image": url})).id, model=MODEL, timeout_s=30)
            assert client.webhooks is not None and client.webhooks.trusted
            emulator.config.webhook_loss_rate = 1.0
            took = []
            for _ in range(MISSES_BEFORE_DISTRUST + 2):
                began = time.monotonic()
                await client.wait((await client.submit(MODEL, {"image": url})).id, model=MODEL, timeout_s=30)
                took.append(time.monotonic() - began)
            assert not client.webhooks.trusted
            return took

    with caplog.at_level(logging.WARNING, logger="hy3d.webhooks"):
        took = asyncio.run(go())

    # Put off by the 3 s grace while trusted; on the usual schedule (0.3 s tasks) afterwards.
    assert all(t >= 3.0 for t in took[:MISSES_BEFORE_DISTRUST]), took
    assert all(t < 2.0 for t in took[MISSES_BEFORE_DISTRUST:]), took
    assert sum("found by polls, not webhook deliveries" in r.getMessage() for r in caplog.records) == 1


def test_forged_deliveries_are_refused_and_do_not_end_a_wait(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 1.0, 0.0
    emulator.config.webhook_loss_rate = 1.0  # only the forgeries arrive
    settings = webhook_settings(emulator)

    async def go() -> tuple[str, int, list[str]]:
        async with WaveSpeedClient(settings) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            prediction = await client.submit(MODEL, {"image": url})
            forged = json.dumps({"id": prediction.id, "status": "failed", "error": "forged"}).encode()
            stamp = str(int(time.time()))
            async with httpx.AsyncClient() as outsider:
                answers = [
                    await outsider.post(
                        settings.webhook_url or "",
                        content=forged,
                        headers={
                            "webhook-id": "m",
                            "webhook-timestamp": stamp,
                            "webhook-signature": signature,
                        },
                    )
                    for signature in ("v3,deadbeef", sign("whsec_guess", "m", stamp, forged))
                ]
                answers.append(await outsider.get(settings.webhook_url or ""))
            done = await client.wait(prediction.id, model=MODEL, timeout_s=30)
            return done.status, emulator.stats.polls_for(prediction.id), [str(a.status_code) for a in answers]

    with caplog.at_level(logging.DEBUG):
        status, polls, answers = asyncio.run(go())

    assert answers == ["401", "401", "405"]
    assert status == "completed" and polls >= 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "signature does not match" in logged
    assert SECRET.removeprefix("whsec_") not in logged and emulator.api_key not in logged
    assert emulator.config.webhook_secret.removeprefix("whsec_") not in logged


def test_a_busy_listen_address_leaves_the_client_polling(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 0.3, 0.0
    settings = webhook_settings(emulator)
    with socket.socket() as taken:
        taken.bind(parse_listen(settings.webhook_listen))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="hy3d.client"):
            _, statuses = asyncio.run(submit_and_wait(settings, 2))

    assert statuses == ["completed"] * 2
    assert emulator.stats.snapshot()["webhooks"] == {}  # submitted without the webhook
    assert any("webhook mode off, polling instead" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_in_webhook_mode_lands_every_mesh(
    emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 1.0, 0.2, 0
    port = free_port()
    monkeypatch.setenv("WAVESPEED_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook")
    monkeypatch.setenv("WAVESPEED_WEBHOOK_LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("WAVESPEED_POLL_INITIAL_INTERVAL_S", "0.5")
    rows = distinct_images(samples, 6)
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(write_csv(samples, rows)), output=str(output), concurrency=6)

    assert state.is_completed(), summary
    stats = emulator.stats.snapshot()
    assert len(stats["webhook_delivered_at"]) == 6
    for item_id, _ in rows:
        metadata = assert_landed(output, item_id)
        assert metadata["prediction"]["id"] in stats["webhook_delivered_at"]
    # Without deliveries every prediction is polled at least once; here the scouts may be.
    assert len(stats["polls_by_prediction"]) < len(rows), stats["polls_by_prediction"]
