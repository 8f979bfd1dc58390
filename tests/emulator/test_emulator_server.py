"""Server start/stop hygiene, the CLI, and the mesh generator."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image

from emulator import EmulatorConfig, EmulatorServer, image_to_glb
from emulator.cli import add_arguments, config_from_args, serve
from emulator.glb import pad_glb
from emulator.meshgen import prompt_to_glb

SAMPLES = Path(__file__).resolve().parents[2] / "hy3d" / "samples"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mesh(glb: bytes) -> trimesh.Trimesh:
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert isinstance(mesh, trimesh.Trimesh)
    return mesh


def _wait_threads_gone(before: set[threading.Thread], timeout: float = 3.0) -> set[threading.Thread]:
    deadline = time.monotonic() + timeout
    while (extra := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    return extra


def test_start_stop_leaves_no_thread_and_is_quick() -> None:
    before = set(threading.enumerate())
    config = EmulatorConfig(latency_s=30.0, jitter_s=0.0)  # a prediction still pending at stop
    server = EmulatorServer(config)
    with server:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        headers = {"Authorization": f"Bearer {server.api_key}"}
        image = _png(Image.new("RGB", (200, 200), (10, 200, 30)))
        upload = httpx.post(
            f"{server.url}/api/v3/media/upload/binary",
            files={"file": ("g.png", image, "image/png")},
            headers=headers,
        )
        submit = httpx.post(
            f"{server.url}/api/v3/wavespeed-ai/hunyuan3d/v2-mini",
            json={"image": upload.json()["data"]["download_url"]},
            headers=headers,
        )
        assert submit.status_code == 200
        keep_alive = httpx.Client()  # an idle keep-alive connection must not hold shutdown up
        assert keep_alive.get(f"{server.url}/_emulator/health").status_code == 200
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
    assert not server.running
    keep_alive.close()
    assert _wait_threads_gone(before) == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/_emulator/health", timeout=1.0)


def test_two_servers_get_different_ports() -> None:
    with EmulatorServer() as one, EmulatorServer() as two:
        assert one.port != two.port
        assert httpx.get(f"{two.url}/_emulator/health").json() == {"ok": True}


def test_cli_flags_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--latency", "0.5", "--jitter", "0", "--max-concurrency", "3", "--failure-rate", "0.25",
            "--failure-codes", "5000,5003", "--poll-429-rate", "0.1", "--poll-5xx-rate", "0.2",
            "--submit-429-rate", "0.3", "--submit-5xx-rate", "0.4", "--no-submit-5xx-accepted",
            "--retry-after", "1.5", "--truncate-rate", "0.05", "--seed", "7", "--api-key", "k",
            "--price", "0.1", "--price", "wavespeed-ai/hunyuan3d/v2.1=0.3", "--mesh-bytes", "1000000",
        ]
    )  # fmt: skip
    config = config_from_args(ns)
    assert config.latency_s == 0.5 and config.jitter_s == 0.0 and config.max_concurrency == 3
    assert config.failure_rate == 0.25 and config.failure_codes == (5000, 5003)
    assert (config.poll_429_rate, config.poll_5xx_rate) == (0.1, 0.2)
    assert (config.submit_429_rate, config.submit_5xx_rate) == (0.3, 0.4)
    assert config.submit_5xx_accepted is False
    assert config.retry_after_s == 1.5 and config.download_truncate_rate == 0.05 and config.seed == 7
    assert config.api_key == "k" and config.mesh_bytes_target == 1_000_000
    assert config.prices["wavespeed-ai/hunyuan3d/v2-mini"] == 0.1
    assert config.prices["wavespeed-ai/hunyuan3d/v2.1"] == 0.3
    assert config_from_args(argparse.Namespace()) == EmulatorConfig()


def test_cli_serve_prints_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    stop = threading.Event()
    stop.set()
    assert serve(parser.parse_args(["--port", "0"]), stop=stop) == 0
    out = capsys.readouterr().out
    assert "WAVESPEED_BASE_URL=http://127.0.0.1:" in out and "WAVESPEED_API_KEY=wsk-emulator-key" in out


def test_python_dash_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "--failure-codes" in result.stdout


# ---- meshes --------------------------------------------------------------------------------------------
def test_meshes_follow_the_image() -> None:
    meshes = {
        name: _mesh(image_to_glb((SAMPLES / name).read_bytes(), 48))
        for name in ("red-ball.png", "gold-star.png")
    }
    ball, star = meshes["red-ball.png"], meshes["gold-star.png"]
    assert len(ball.faces) > 0 and len(star.faces) > 0
    assert len(ball.vertices) != len(star.vertices)
    assert ball.is_watertight and star.is_watertight
    assert isinstance(ball.visual, trimesh.visual.TextureVisuals)


def test_blank_image_still_has_faces_and_generation_is_fast() -> None:
    blank = _png(Image.new("RGB", (256, 256), (255, 255, 255)))
    assert len(_mesh(image_to_glb(blank, 48)).faces) > 0
    big = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)))
    image_to_glb(big, 48)  # warm-up
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        image_to_glb(big, 48)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.25  # typically ~30 ms; generous for loaded CI machines


def test_prompt_meshes_differ_by_prompt() -> None:
    chair, lamp = _mesh(prompt_to_glb("a chair", 24)), _mesh(prompt_to_glb("a lamp", 24))
    assert len(chair.faces) > 0
    assert not np.allclose(chair.bounds, lamp.bounds)
    assert np.allclose(_mesh(prompt_to_glb("a chair", 24)).bounds, chair.bounds)


def test_padded_glb_stays_valid() -> None:
    glb = image_to_glb((SAMPLES / "blue-mug.png").read_bytes(), 24)
    padded = pad_glb(glb, 3_000_000)
    assert 3_000_000 - 4 <= len(padded) <= 3_000_000
    assert len(_mesh(padded).faces) == len(_mesh(glb).faces)
    assert pad_glb(glb, 10) == glb
