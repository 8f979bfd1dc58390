"""The client against the emulator over loopback: routes, errors, retries and what they cost."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from emulator import EmulatorServer
from tasks.client import SUBMIT_KEEPALIVE_S, WaveSpeedClient, WaveSpeedSettings
from tasks.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    SubmitOutcomeUnknownError,
)
from tests.conftest import SAMPLES, settings_for

MODEL = "wavespeed-ai/hunyuan3d/v2-mini"
BALL = (SAMPLES / "red-ball.png").read_bytes()


def client_for(server: EmulatorServer, **overrides: object) -> WaveSpeedClient:
    return WaveSpeedClient(
        settings_for(server, poll_initial_interval_s=0.05, poll_max_interval_s=0.2, **overrides)
    )


async def _submit_and_wait(client: WaveSpeedClient, upload_method: str = "binary") -> tuple[str, str]:
    upload = client.upload_binary if upload_method == "binary" else client.upload_presigned
    url = await upload(BALL, "ball.png", "image/png")
    prediction = await client.submit(MODEL, {"image": url})
    assert prediction.status in {"created", "processing"}
    done = await client.wait(prediction.id, timeout_s=30)
    assert done.status == "completed", done
    output = next(url for url in done.outputs if url.split("?")[0].endswith(".glb"))
    return done.id, output


@pytest.mark.parametrize("upload_method", ["binary", "presigned"])
def test_upload_submit_wait_download(emulator: EmulatorServer, upload_method: str, tmp_path: Path) -> None:
    async def go() -> None:
        async with client_for(emulator) as client:
            prediction_id, output = await _submit_and_wait(client, upload_method)
            async with client.stream_output(output) as response:
                body = await response.aread()
        assert body[:4] == b"glTF"
        assert emulator.stats.polls_for(prediction_id) >= 1
        assert emulator.stats.submits_for_image_bytes(BALL) == 1
        assert emulator.stats.upload_puts_with_authorization == 0  # the key never goes to storage URLs

    asyncio.run(go())


def test_wait_polls_with_a_growing_interval(emulator: EmulatorServer) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 1.5, 0.0

    async def go() -> int:
        settings = settings_for(
            emulator,
            poll_initial_interval_s=0.1,
            poll_backoff=2.0,
            # The suite's environment caps intervals at 0.3 s; uncapped, the test does not sit on
            # the edge of a poll landing exactly at the 1.5 s completion (6 or 7 polls).
            poll_max_interval_s=15.0,
        )
        async with WaveSpeedClient(settings) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            prediction = await client.submit(MODEL, {"image": url})
            await client.wait(prediction.id)
            return emulator.stats.polls_for(prediction.id)

    polls = asyncio.run(go())
    # Fixed 0.1 s polling would take ~15 polls over 1.5 s; doubling intervals take about 5.
    assert 3 <= polls <= 6


def test_wrong_key_is_an_authentication_error_and_not_retried(emulator: EmulatorServer) -> None:
    async def go() -> None:
        settings = WaveSpeedSettings(api_key="wsk-wrong", base_url=emulator.url)
        async with WaveSpeedClient(settings) as client:
            with pytest.raises(AuthenticationError) as raised:
                await client.submit(MODEL, {"image": "http://127.0.0.1:9/x.png"})
            assert "wsk-wrong" not in str(raised.value)
            assert "WAVESPEED_API_KEY" in str(raised.value)
            with pytest.raises(AuthenticationError):
                await client.get_prediction("0" * 32)

    asyncio.run(go())
    assert emulator.stats.auth_failures == 2


def test_bad_request_and_not_found(emulator: EmulatorServer) -> None:
    async def go() -> None:
        async with client_for(emulator) as client:
            with pytest.raises(BadRequestError, match="image"):
                await client.submit(MODEL, {})
            with pytest.raises(NotFoundError):
                await client.get_prediction("f" * 32)

    asyncio.run(go())
    assert emulator.stats.submits_accepted == 0


def test_submit_retried_on_429_only_and_never_billed_twice(emulator: EmulatorServer) -> None:
    emulator.config.submit_429_rate = 1.0

    async def go() -> None:
        async with client_for(emulator, request_attempts=3) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            with pytest.raises(RateLimitError):
                await client.submit(MODEL, {"image": url})

    asyncio.run(go())
    assert emulator.stats.submits_received == 3  # refused each time, so safe to resend
    assert emulator.stats.submits_accepted == 0


@pytest.mark.parametrize("accepted", [True, False])
def test_submit_5xx_is_ambiguous_and_not_resent(emulator: EmulatorServer, accepted: bool) -> None:
    emulator.config.submit_5xx_rate = 1.0
    emulator.config.submit_5xx_accepted = accepted
    emulator.config.fault_5xx_statuses = (502,)

    async def go() -> None:
        async with client_for(emulator) as client:
            url = await client.upload(BALL, "ball.png", "image/png")
            with pytest.raises(SubmitOutcomeUnknownError) as raised:
                await client.submit(MODEL, {"image": url})
            assert "502" in str(raised.value)

    asyncio.run(go())
    assert emulator.stats.submits_received == 1
    assert emulator.stats.submits_accepted == (1 if accepted else 0)


def test_polls_ride_out_429_and_5xx(emulator: EmulatorServer) -> None:
    emulator.config.poll_429_rate = 0.3
    emulator.config.poll_5xx_rate = 0.3
    emulator.config.retry_after_s = 0.1

    async def go() -> None:
        async with client_for(emulator, request_attempts=20) as client:
            await _submit_and_wait(client)

    asyncio.run(go())
    assert emulator.stats.fault_count("poll_429") + emulator.stats.fault_count("poll_5xx") > 0
    assert emulator.stats.submits_accepted == 1


def test_read_timeout_on_submit_is_ambiguous() -> None:
    """A transport that times out after sending: the server may have the prediction."""

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async def go() -> None:
        client = WaveSpeedClient(
            WaveSpeedSettings(api_key="k", base_url="http://ws.test"), transport=httpx.MockTransport(timeout)
        )
        async with client:
            with pytest.raises(SubmitOutcomeUnknownError):
                await client.submit(MODEL, {"image": "https://example.test/a.png"})

    asyncio.run(go())


def test_repr_and_errors_never_show_the_key(emulator: EmulatorServer) -> None:
    secret = "wsk-SECRET-0123456789"
    settings = WaveSpeedSettings(api_key=secret, base_url=emulator.url)
    client = WaveSpeedClient(settings)
    assert secret not in repr(client)
    assert secret not in repr(settings)
    assert secret not in str(settings.model_dump())
    asyncio.run(client.aclose())


def _scripted(*steps: object) -> httpx.MockTransport:
    """A transport answering polls from a script: a dict is a 200 envelope around it, an int a bare
    status, bytes a raw 200 body, an exception class is raised as if the network failed."""
    script = list(steps)

    def handle(request: httpx.Request) -> httpx.Response:
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("scripted failure", request=request)  # type: ignore[call-arg]
        if isinstance(step, int):
            return httpx.Response(step, json={"code": step, "message": "scripted"})
        if isinstance(step, bytes):
            return httpx.Response(200, content=step)
        return httpx.Response(200, json={"code": 200, "message": "success", "data": step})

    return httpx.MockTransport(handle)


def _prediction(status: str) -> dict[str, object]:
    outputs = ["https://cdn.example.test/out.glb"] if status == "completed" else []
    return {"id": "a" * 32, "status": status, "outputs": outputs, "error": "", "code": 0}


def test_wait_rides_out_resets_bad_json_unknown_statuses_and_bare_429() -> None:
    transport = _scripted(
        httpx.ReadError,
        b"<html>not json</html>",
        429,
        _prediction("queued"),  # unknown status: keep waiting
        503,
        httpx.RemoteProtocolError,
        _prediction("processing"),
        _prediction("completed"),
    )

    async def go() -> None:
        settings = WaveSpeedSettings(api_key="k", base_url="http://ws.test", poll_initial_interval_s=0.01)
        async with WaveSpeedClient(settings, transport=transport) as client:
            done = await client.wait("a" * 32, timeout_s=30)
        assert done.status == "completed"
        assert "https://cdn.example.test/out.glb" in done.outputs

    asyncio.run(go())


def test_wait_gives_up_at_the_deadline_not_before() -> None:
    from tasks.errors import PredictionTimeoutError

    async def go() -> None:
        settings = WaveSpeedSettings(api_key="k", base_url="http://ws.test", poll_initial_interval_s=0.05)
        async with WaveSpeedClient(settings, transport=_scripted(_prediction("processing"))) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(PredictionTimeoutError) as raised:
                await client.wait("a" * 32, timeout_s=0.5)
            assert 0.45 <= asyncio.get_running_loop().time() - started < 2
            assert raised.value.last_status == "processing"

    asyncio.run(go())


def test_submit_connection_refused_is_retried_then_reported_as_not_sent() -> None:
    from tasks.errors import RequestNotSentError

    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    async def go() -> None:
        settings = WaveSpeedSettings(api_key="k", base_url="http://ws.test", request_attempts=3)
        async with WaveSpeedClient(settings, transport=httpx.MockTransport(refuse)) as client:
            with pytest.raises(RequestNotSentError):
                await client.submit(MODEL, {"image": "https://example.test/a.png"})

    asyncio.run(go())
    assert calls == 3  # never reached the server, so resending could not bill twice


def test_outputs_are_fetched_only_over_http_and_within_the_size_cap(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    from tasks.errors import DownloadError

    async def go() -> None:
        async with client_for(emulator) as client:
            for url in ("file:///etc/passwd", "ftp://example.test/a.glb", "s3://bucket/a.glb"):
                with pytest.raises(DownloadError, match="not http"):
                    async with client.stream_output(url):
                        pass
            _, output = await _submit_and_wait(client)
            target = tmp_path / "mesh.glb"
            with pytest.raises(DownloadError, match="cap"):
                await client.download(output, str(target), max_bytes=1000)
            done = await client.download(output, str(target), max_bytes=10**9)
            assert done.size == target.stat().st_size > 1000

    asyncio.run(go())


class _ConnectionRecorder(http.server.BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 answering every request with a created prediction; records, per request,
    the client port (one per TCP connection)."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, int]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        type(self).seen.append((self.command, self.client_address[1]))
        body = json.dumps(
            {"code": 200, "message": "success", "data": {"id": "a" * 32, "status": "created"}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_submit_never_reuses_a_connection_idle_for_a_second() -> None:
    """A server closing an idle connection can drop a request that raced it unanswered, and an
    unanswered submit cannot be resent: submits only reuse connections idle for < 1 s; polls keep
    the longer keep-alive."""
    _ConnectionRecorder.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ConnectionRecorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    async def main() -> None:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        async with WaveSpeedClient(api_key="wsk-test", base_url=base) as client:
            await client.submit("wavespeed-ai/hunyuan3d/v2-mini", {"image": "https://x/a.png"})
            await client.submit("wavespeed-ai/hunyuan3d/v2-mini", {"image": "https://x/b.png"})
            await asyncio.sleep(SUBMIT_KEEPALIVE_S + 0.3)
            await client.submit("wavespeed-ai/hunyuan3d/v2-mini", {"image": "https://x/c.png"})
            await client.get_prediction("a" * 32)
            await asyncio.sleep(SUBMIT_KEEPALIVE_S + 0.3)
            await client.get_prediction("a" * 32)

    try:
        asyncio.run(main())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    submits = [port for method, port in _ConnectionRecorder.seen if method == "POST"]
    polls = [port for method, port in _ConnectionRecorder.seen if method == "GET"]
    assert len(submits) == 3 and len(polls) == 2
    assert submits[0] == submits[1]  # back to back: the connection is reused
    assert submits[2] != submits[1]  # idle past the limit: a new connection
    assert polls[0] == polls[1]  # polls may reuse a connection idle for longer (safe to resend)
