"""Fixtures for the emulator tests: one live server per test module, reset before every test, and a raw
httpx client (these tests never use the project's own client)."""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from emulator import EmulatorConfig, EmulatorServer

SAMPLES = Path(__file__).resolve().parents[2] / "hy3d" / "samples"
MINI = "wavespeed-ai/hunyuan3d/v2-mini"
TERMINAL = ("completed", "failed", "cancelled", "timeout")


def fast_config() -> EmulatorConfig:
    """Fast defaults for tests: 50 ms processing, no jitter, reproducible."""
    return EmulatorConfig(latency_s=0.05, jitter_s=0.0, seed=1234)


@pytest.fixture(scope="module")
def _module_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(fast_config()) as server:
        yield server


@pytest.fixture
def emu(_module_server: EmulatorServer) -> EmulatorServer:
    """The module's server with the test config restored and all state/stats cleared."""
    baseline = fast_config()
    for f in dataclasses.fields(EmulatorConfig):
        setattr(_module_server.config, f.name, copy.deepcopy(getattr(baseline, f.name)))
    _module_server.reset()
    return _module_server


@pytest.fixture
def realistic(emu: EmulatorServer) -> EmulatorServer:
    """`emu` in the realistic profile, without unlisted statuses unless a test asks for them."""
    emu.config.profile = "realistic"
    emu.config.unlisted_status_rate = 0.0
    return emu


class Api:
    """Thin helpers over a raw httpx.Client talking to the emulator."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10.0
        )

    def submit(self, body: dict[str, Any], model: str = MINI, **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/api/v3/{model}", json=body, **kwargs)

    def submit_ok(self, body: dict[str, Any], model: str = MINI) -> dict[str, Any]:
        response = self.submit(body, model)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def poll(self, pid: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v3/predictions/{pid}/result")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait(self, pid: str, timeout: float = 10.0, interval: float = 0.02) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.poll(pid)
            if data["status"] in TERMINAL:
                return data
            assert time.monotonic() < deadline, f"prediction {pid} still {data['status']}"
            time.sleep(interval)

    def upload(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> str:
        response = self.http.post(
            "/api/v3/media/upload/binary", files={"file": (filename, data, content_type)}
        )
        assert response.status_code == 200, response.text
        url: str = response.json()["data"]["download_url"]
        return url

    def upload_presigned(
        self, data: bytes, filename: str = "image.png", content_type: str = "image/png"
    ) -> str:
        response = self.http.post(
            "/api/v3/media/uploads",
            json={"filename": filename, "size": len(data), "content_type": content_type},
        )
        assert response.status_code == 200, response.text
        slot = response.json()["data"]
        put = httpx.put(slot["upload"]["url"], content=data, headers=slot["upload"]["headers"])
        assert put.status_code == 200, put.text
        url: str = slot["download_url"]
        return url


@pytest.fixture
def api(emu: EmulatorServer) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.http.close()


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    """make_image(shape="disc"|"square"|"blank", color=(r, g, b), size=160) -> PNG bytes."""

    def make(shape: str = "disc", color: tuple[int, int, int] = (200, 40, 40), size: int = 160) -> bytes:
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        if shape == "disc":
            draw.ellipse((size * 0.2, size * 0.2, size * 0.8, size * 0.8), fill=color)
        elif shape == "square":
            draw.rectangle((size * 0.1, size * 0.3, size * 0.9, size * 0.7), fill=color)
        return png_bytes(image)

    return make


@pytest.fixture
def sample_bytes() -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (SAMPLES / name).read_bytes()

    return read
