"""Submit, poll and the prediction lifecycle, over real loopback HTTP."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import httpx
import pytest
import trimesh

from emulator import EmulatorServer

MINI = "wavespeed-ai/hunyuan3d/v2-mini"
UNAUTHORIZED = {"code": 401, "message": "Unauthorized: invalid API key", "data": None}


def load_glb(data: bytes) -> trimesh.Trimesh:
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert isinstance(mesh, trimesh.Trimesh)
    return mesh


def glb_url(outputs: list[str]) -> str:
    return next(url for url in outputs if url.endswith(".glb"))


# ---- auth ----------------------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401_and_creates_nothing(emu: EmulatorServer, api: Any) -> None:
    body = {"image": "https://example.com/a.png"}
    bare = httpx.post(f"{emu.url}/api/v3/{MINI}", json=body)
    wrong = httpx.post(
        f"{emu.url}/api/v3/{MINI}", json=body, headers={"Authorization": "Bearer sk-wrong-SECRET-123"}
    )
    not_bearer = httpx.post(f"{emu.url}/api/v3/{MINI}", json=body, headers={"Authorization": emu.api_key})
    poll = httpx.get(
        f"{emu.url}/api/v3/predictions/{'0' * 32}/result", headers={"Authorization": "Bearer nope"}
    )
    for response in (bare, wrong, not_bearer, poll):
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    assert "sk-wrong-SECRET-123" not in wrong.text + str(dict(wrong.headers))
    assert emu.stats.auth_failures == 4
    assert emu.stats.submits_received == 3
    assert emu.stats.submits_accepted == 0
    assert emu.state.store.predictions == {}
    assert emu.config.balance == 100.0
    assert emu.stats.requests_for("POST", "/api/v3/{model_id:path}", 401) == 3


# ---- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "body", "missing"),
    [
        ("wavespeed-ai/hunyuan3d/v2-mini", {}, "image"),
        ("wavespeed-ai/hunyuan3d/v2-base", {"prompt": "x"}, "image"),
        ("wavespeed-ai/hunyuan3d/v2.1", {"image": ""}, "image"),
        (
            "wavespeed-ai/hunyuan3d-v2-multi-view",
            {"front_image_url": "https://e.com/f.png", "back_image_url": "https://e.com/b.png"},
            "left_image_url",
        ),
        ("wavespeed-ai/hunyuan3d-v3/image-to-3d", {"back_image": "https://e.com/b.png"}, "image"),
        ("wavespeed-ai/hunyuan3d-v3/text-to-3d", {"image": "https://e.com/a.png"}, "prompt"),
        ("wavespeed-ai/hunyuan3d-v3/sketch-to-3d", {"image": "https://e.com/a.png"}, "prompt"),
        ("wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid", {"images": ["x"]}, "image"),
    ],
)
def test_missing_required_input_is_400_naming_it(
    emu: EmulatorServer, api: Any, model: str, body: dict[str, Any], missing: str
) -> None:
    response = api.submit(body, model)
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == 400 and payload["data"] is None
    assert missing in payload["message"]
    assert emu.stats.submits_accepted == 0


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (
            "wavespeed-ai/hunyuan3d-v3/image-to-3d",
            {"image": "https://e.com/a.png", "face_count": 10},
            "face_count",
        ),
        (
            "wavespeed-ai/hunyuan3d-v3/image-to-3d",
            {"image": "https://e.com/a.png", "polygon_type": "hex"},
            "polygon_type",
        ),
        ("wavespeed-ai/hunyuan3d-v3/text-to-3d", {"prompt": "x" * 1025}, "prompt"),
        (
            "wavespeed-ai/hunyuan3d-v2-multi-view",
            {
                "front_image_url": "https://e.com/f.png",
                "back_image_url": "https://e.com/b.png",
                "left_image_url": "https://e.com/l.png",
                "num_inference_steps": 51,
            },
            "num_inference_steps",
        ),
        ("wavespeed-ai/hunyuan3d/v2-mini", {"image": 42}, "image"),
    ],
)
def test_invalid_input_is_400_naming_it(
    emu: EmulatorServer, api: Any, model: str, body: dict[str, Any], field: str
) -> None:
    response = api.submit(body, model)
    assert response.status_code == 400
    assert field in response.json()["message"]


def test_unknown_model_is_404_and_bad_json_is_400(emu: EmulatorServer, api: Any) -> None:
    response = api.submit({"image": "https://e.com/a.png"}, "wavespeed-ai/hunyuan3d/v9-imaginary")
    assert response.status_code == 404
    assert response.json()["code"] == 404
    bad = api.http.post(f"/api/v3/{MINI}", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    assert emu.stats.submits_accepted == 0


def test_unknown_keys_are_ignored_and_webhook_recorded(
    emu: EmulatorServer, api: Any, make_image: Any
) -> None:
    url = api.upload(make_image())
    response = api.submit(
        {"image": url, "whatever": [1, 2], "X": None}, params={"webhook": "https://hook.example/x"}
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["status"] == "created"
    assert emu.stats.snapshot()["webhooks"] == {data["id"]: "https://hook.example/x"}


# ---- lifecycle -----------------------------------------------------------------------------------------
def test_full_lifecycle_to_a_loadable_glb(emu: EmulatorServer, api: Any, sample_bytes: Any) -> None:
    emu.config.latency_s = 0.3
    url = api.upload(sample_bytes("red-ball.png"))
    response = api.submit({"image": url})
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["code"] == 200
    created = envelope["data"]
    assert created["status"] == "created"
    assert re.fullmatch(r"[0-9a-f]{32}", created["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", created["created_at"])
    assert created["outputs"] == [] and created["has_nsfw_contents"] == []
    assert created["error"] == "" and created["code"] == 0
    assert created["model"] == MINI and created["input"] == {"image": url}
    pid = created["id"]
    assert created["urls"]["get"] == f"{emu.url}/api/v3/predictions/{pid}/result"

    seen = set()
    deadline = time.monotonic() + 10
    while (data := api.poll(pid))["status"] not in ("completed", "failed"):
        seen.add(data["status"])
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "processing" in seen
    assert data["status"] == "completed", data
    assert data["code"] == 0 and data["error"] == ""
    assert len(data["outputs"]) == 1 and data["outputs"][0].startswith(f"{emu.url}/cdn/output/")
    assert data["outputs"][0].endswith(".glb")
    assert data["has_nsfw_contents"] == [False]
    assert data["executionTime"] >= 250 and data["timings"]["inference"] >= 250
    # the other poll route answers the same prediction
    same = api.http.get(f"/api/v3/predictions/{pid}").json()["data"]
    assert same["id"] == pid and same["status"] == "completed"

    download = httpx.get(data["outputs"][0])  # unauthenticated CDN
    assert download.status_code == 200
    assert download.headers["content-type"] == "model/gltf-binary"
    assert int(download.headers["content-length"]) == len(download.content)
    mesh = load_glb(download.content)
    assert len(mesh.faces) > 0
    assert emu.stats.completed == 1 and emu.stats.in_flight == 0


def test_different_images_give_different_meshes(emu: EmulatorServer, api: Any, sample_bytes: Any) -> None:
    meshes = []
    for name in ("gold-star.png", "green-pyramid.jpg"):
        pid = api.submit_ok({"image": api.upload(sample_bytes(name), name)})["id"]
        data = api.wait(pid)
        assert data["status"] == "completed", data
        meshes.append(load_glb(httpx.get(data["outputs"][0]).content))
    star, pyramid = meshes
    assert len(star.faces) > 0 and len(pyramid.faces) > 0
    assert len(star.vertices) != len(pyramid.vertices) or not (star.bounds == pyramid.bounds).all()


def test_unknown_prediction_is_404(emu: EmulatorServer, api: Any) -> None:
    response = api.http.get(f"/api/v3/predictions/{'a' * 32}/result")
    assert response.status_code == 404
    assert response.json()["code"] == 404 and response.json()["data"] is None


def test_account_concurrency_queues_beyond_the_limit(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    emu.config.max_concurrency = 1
    emu.config.latency_s = 0.3
    url = api.upload(make_image())
    first = api.submit_ok({"image": url})["id"]
    second = api.submit_ok({"image": url})["id"]
    deadline = time.monotonic() + 5
    while api.poll(first)["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert api.poll(second)["status"] == "created"
    assert api.wait(first)["status"] == "completed"
    assert api.wait(second)["status"] == "completed"
    assert emu.stats.peak_processing == 1
    assert emu.stats.peak_in_flight == 2


def test_failure_rate_fails_with_a_configured_code(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    emu.config.failure_rate = 1.0
    emu.config.failure_codes = (5003,)
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    data = api.wait(pid)
    response = api.http.get(f"/api/v3/predictions/{pid}/result")
    assert response.status_code == 200 and response.json()["code"] == 200  # task failure, HTTP success
    assert data["status"] == "failed"
    assert data["code"] == 5003
    assert data["error"]
    assert data["outputs"] == []
    assert emu.stats.failed == 1 and emu.stats.submits_accepted == 1  # failed tasks are billed too


def test_unreachable_image_url_fails_1402(emu: EmulatorServer, api: Any) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/missing.png"
    pids = [
        api.submit_ok({"image": dead})["id"],
        api.submit_ok({"image": f"{emu.url}/cdn/media/does-not-exist.png"})["id"],
        api.submit_ok({"image": f"{emu.url}/_emulator/health"})["id"],  # 200 but not an image
    ]
    for pid in pids:
        data = api.wait(pid)
        assert data["status"] == "failed", data
        assert data["code"] == 1402
        assert "download" in data["error"].lower()


def test_foreign_image_url_is_fetched_over_http(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    own = api.upload(make_image())
    foreign = own.replace("127.0.0.1", "localhost")  # another host name: fetched with httpx, not from memory
    data = api.wait(api.submit_ok({"image": foreign})["id"])
    assert data["status"] == "completed", data
    assert emu.stats.submits_for_url(foreign) == 1
    assert emu.stats.requests_for("GET", "/cdn/media/{key}", 200) == 1


def test_too_small_image_fails_1401(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = api.wait(api.submit_ok({"image": api.upload(make_image(size=64))})["id"])
    assert data["status"] == "failed" and data["code"] == 1401


def test_text_to_3d_returns_preview_and_glb(emu: EmulatorServer, api: Any) -> None:
    model = "wavespeed-ai/hunyuan3d-v3/text-to-3d"
    data = api.wait(api.submit_ok({"prompt": "a small wooden chair"}, model)["id"])
    assert data["status"] == "completed", data
    assert len(data["outputs"]) == 2 and data["has_nsfw_contents"] == [False, False]
    assert not data["outputs"][0].endswith(".glb")  # clients must choose by extension
    assert len(load_glb(httpx.get(glb_url(data["outputs"])).content).faces) > 0
    assert emu.stats.submits_for_prompt("a small wooden chair") == 1


def test_multi_view_has_the_malformed_get_url(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    views = {k: api.upload(make_image()) for k in ("front_image_url", "back_image_url", "left_image_url")}
    created = api.submit_ok(views, "wavespeed-ai/hunyuan3d-v2-multi-view")
    assert f"{emu.url}//api/v3/predictions/" in created["urls"]["get"]
    assert api.wait(created["id"])["status"] == "completed"


def test_sync_mode_blocks_until_done_or_times_out(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    url = api.upload(make_image())
    done = api.submit({"image": url, "enable_sync_mode": True})
    assert done.status_code == 200 and done.json()["data"]["status"] == "completed"
    emu.config.latency_s = 1.0
    emu.config.sync_timeout_s = 0.1
    late = api.submit({"image": url, "enable_sync_mode": True}).json()["data"]
    assert late["status"] == "processing" and late["code"] == 5004
    assert "Sync mode timed out" in late["error"]


def test_base64_output_and_its_webhook_conflict(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    url = api.upload(make_image())
    conflict = api.submit(
        {"image": url, "enable_base64_output": True}, params={"webhook": "https://h.example"}
    )
    assert conflict.status_code == 400
    assert "webhook" in conflict.json()["error"]
    data = api.wait(api.submit_ok({"image": url, "enable_base64_output": True})["id"])
    import base64

    assert len(load_glb(base64.b64decode(data["outputs"][0])).faces) > 0
