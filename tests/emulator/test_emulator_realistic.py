"""The realistic profile (nulls, object outputs, signed URLs, OBJ zips, minimal upload headers, discounts)
and the switches that go with it (cancelled/timeout, unlisted statuses, expired links, echoed keys)."""

from __future__ import annotations

import argparse
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trimesh

from emulator import EmulatorConfig, EmulatorServer
from emulator.cli import add_arguments, config_from_args

MINI = "wavespeed-ai/hunyuan3d/v2-mini"
V3_IMAGE = "wavespeed-ai/hunyuan3d-v3/image-to-3d"
V31_TEXT_RAPID = "wavespeed-ai/hunyuan-3d-v3.1/text-to-3d-rapid"
MULTI_VIEW = "wavespeed-ai/hunyuan3d-v2-multi-view"
NULLS = ("outputs", "has_nsfw_contents", "timings", "error", "code", "executionTime")
EXPIRED = {"message": "AccessDenied: Request has expired"}


def signed_url_pattern(emu: EmulatorServer) -> re.Pattern[str]:
    return re.compile(
        re.escape(emu.url) + r"/cdn/o/[0-9a-f]{32}\?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        r"&X-Amz-Date=\d{8}T\d{6}Z&X-Amz-Expires=86400&X-Amz-Signature=[0-9a-f]{64}"
    )


def mesh_item(outputs: list[Any]) -> dict[str, Any]:
    (item,) = [o for o in outputs if isinstance(o, dict)]
    return item


def url_of(item: str | dict[str, Any]) -> str:
    return item if isinstance(item, str) else str(item["url"])


# ---- answer shapes -------------------------------------------------------------------------------------
def test_nulls_until_completion_then_preview_string_and_mesh_object(
    realistic: EmulatorServer, api: Any, make_image: Any
) -> None:
    realistic.config.latency_s = 0.3
    created = api.submit_ok({"image": api.upload(make_image())})
    assert created["status"] == "created"
    assert {name: created[name] for name in NULLS} == dict.fromkeys(NULLS)
    pid = created["id"]
    deadline = time.monotonic() + 5
    while (processing := api.poll(pid))["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert {name: processing[name] for name in NULLS} == dict.fromkeys(NULLS)

    done = api.wait(pid)
    assert done["status"] == "completed", done
    assert done["timings"] is None and done["error"] is None and "code" not in done
    assert isinstance(done["executionTime"], int) and done["executionTime"] >= 250
    assert done["has_nsfw_contents"] == [False, False]
    preview, mesh = done["outputs"]  # the preview first, as a plain string
    assert isinstance(preview, str) and signed_url_pattern(realistic).fullmatch(preview)
    assert set(mesh) == {"url", "type", "format", "size"}
    assert signed_url_pattern(realistic).fullmatch(mesh["url"])
    assert (mesh["type"], mesh["format"]) == ("model/gltf-binary", "glb")

    glb = httpx.get(mesh["url"])
    assert glb.status_code == 200 and glb.headers["content-type"] == "application/octet-stream"
    assert len(glb.content) == mesh["size"] and glb.content[:4] == b"glTF"
    assert len(trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh").faces) > 0
    head = httpx.head(mesh["url"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == mesh["size"]
    png = httpx.get(preview)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert realistic.stats.downloads_for(mesh["url"]) == 1


def test_failed_answers_carry_error_and_code_and_can_echo_the_key(
    realistic: EmulatorServer, api: Any, make_image: Any
) -> None:
    realistic.config.failure_rate = 1.0
    realistic.config.failure_codes = (5003,)
    realistic.config.echo_api_key_in_errors = True
    failed = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    assert failed["status"] == "failed" and failed["code"] == 5003
    assert f"Bearer {realistic.api_key}" in failed["error"]
    assert failed["outputs"] is None and failed["executionTime"] is None and failed["timings"] is None


def test_signatures_and_expiry_are_checked(realistic: EmulatorServer, api: Any, make_image: Any) -> None:
    done = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    url = mesh_item(done["outputs"])["url"]
    tampered = url[:-1] + ("1" if url.endswith("0") else "0")
    for bad in (url.split("?")[0], tampered):
        denied = httpx.get(bad)
        assert denied.status_code == 403 and "<Code>AccessDenied</Code>" in denied.text
    assert httpx.get(url.replace("X-Amz-Expires=86400", "X-Amz-Expires=99999")).status_code == 403
    realistic.config.output_url_ttl_s = 0
    stale = mesh_item(api.poll(done["id"])["outputs"])["url"]
    assert "X-Amz-Expires=0" in stale
    expired = httpx.get(stale)
    assert expired.status_code == 403 and expired.json() == EXPIRED
    assert httpx.get(url).status_code == 200


@pytest.mark.parametrize(("model", "body"), [(V3_IMAGE, None), (V31_TEXT_RAPID, {"prompt": "a teapot"})])
def test_v3_models_return_an_obj_zip(
    realistic: EmulatorServer,
    api: Any,
    make_image: Any,
    tmp_path: Path,
    model: str,
    body: dict[str, Any] | None,
) -> None:
    done = api.wait(api.submit_ok(body or {"image": api.upload(make_image())}, model)["id"])
    assert done["status"] == "completed", done
    assert isinstance(done["outputs"][0], str)  # the preview first
    mesh = mesh_item(done["outputs"])
    assert (mesh["type"], mesh["format"]) == ("application/zip", "obj")
    download = httpx.get(mesh["url"])
    assert download.headers["content-type"] == "application/octet-stream"
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert sorted(archive.namelist()) == ["model.mtl", "model.obj", "texture.png"]
    obj = archive.read("model.obj").decode()
    assert "mtllib model.mtl\n" in obj and "usemtl material_0\n" in obj
    assert all(re.search(rf"^{kind} ", obj, re.M) for kind in ("v", "vt", "vn"))
    assert re.search(r"^f (\d+)/\1/\1 (\d+)/\2/\2 (\d+)/\3/\3$", obj, re.M)
    assert "map_Kd texture.png" in archive.read("model.mtl").decode()
    assert archive.read("texture.png")[:4] == b"\x89PNG"
    archive.extractall(tmp_path)
    loaded = trimesh.load(tmp_path / "model.obj", force="mesh", process=False)
    assert len(loaded.faces) > 0 and isinstance(loaded.visual, trimesh.visual.TextureVisuals)


def test_v2_models_can_return_plain_obj_text(realistic: EmulatorServer, api: Any, make_image: Any) -> None:
    realistic.config.v2_obj_output = True
    done = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    mesh = mesh_item(done["outputs"])
    assert (mesh["type"], mesh["format"]) == ("model/obj", "obj")
    obj = httpx.get(mesh["url"]).text
    assert obj.startswith("#") and "mtllib" not in obj and re.search(r"^f \d+/\d+/\d+ ", obj, re.M)
    realistic.config.profile = "default"
    plain = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    (url,) = plain["outputs"]
    assert url.endswith(".obj") and httpx.get(url).headers["content-type"] == "model/obj"


# ---- uploads -------------------------------------------------------------------------------------------
def test_presigned_upload_signs_only_if_none_match(
    realistic: EmulatorServer, api: Any, make_image: Any
) -> None:
    data = make_image()
    created = api.http.post("/api/v3/media/uploads", json={"filename": "cat.png", "size": len(data)})
    assert created.status_code == 200, created.text
    slot = created.json()["data"]
    assert slot["upload"]["headers"] == {"If-None-Match": "*"} and slot["type"] == "image"
    url = slot["upload"]["url"]
    missing = httpx.put(url, content=data, headers={"Content-Type": "image/png"})
    assert missing.status_code == 400 and "If-None-Match" in missing.text
    assert httpx.put(url, content=data, headers={"If-None-Match": "*"}).status_code == 200
    again = httpx.put(url, content=data, headers={"If-None-Match": "*"})
    assert again.status_code == 412 and "PreconditionFailed" in again.text
    served = httpx.get(slot["download_url"])
    assert served.content == data and served.headers["content-type"] == "image/png"
    assert realistic.stats.uploads["put"] == 1


# ---- statuses ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["default", "realistic"])
def test_cancelled_and_timeout_are_terminal_without_outputs(
    emu: EmulatorServer, api: Any, make_image: Any, profile: str
) -> None:
    emu.config.profile = profile
    url = api.upload(make_image())
    emu.config.cancel_rate = 1.0
    cancelled = api.wait(api.submit_ok({"image": url})["id"])
    emu.config.cancel_rate, emu.config.timeout_rate = 0.0, 1.0
    timed_out = api.wait(api.submit_ok({"image": url})["id"])
    assert cancelled["status"] == "cancelled" and timed_out["status"] == "timeout"
    assert timed_out["code"] == 5004
    for data in (cancelled, timed_out):
        assert data["outputs"] == ([] if profile == "default" else None)
    assert emu.stats.cancelled == 1 and emu.stats.timed_out == 1 and emu.stats.completed == 0


def test_unlisted_status_before_processing(realistic: EmulatorServer, api: Any, make_image: Any) -> None:
    realistic.config.unlisted_status_rate = 1.0
    realistic.config.latency_s = 0.4
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while (status := api.poll(pid)["status"]) != "completed":
        if not seen or seen[-1] != status:
            seen.append(status)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    unlisted = [s for s in seen if s not in ("created", "processing")]
    assert unlisted and set(unlisted) <= {"queued", "starting"}
    assert seen.index("processing") > seen.index(unlisted[0])


# ---- models and money ----------------------------------------------------------------------------------
def test_text_to_3d_rapid_and_multi_view_limits(emu: EmulatorServer, api: Any) -> None:
    assert V31_TEXT_RAPID in emu.config.prices
    too_long = api.submit({"prompt": "x" * 201}, V31_TEXT_RAPID)
    assert too_long.status_code == 400 and "prompt" in too_long.json()["message"]
    assert api.submit({"image": "https://e.com/a.png"}, V31_TEXT_RAPID).status_code == 400
    assert api.submit({"prompt": "x" * 200}, V31_TEXT_RAPID).status_code == 200
    views = {f"{side}_image_url": f"https://e.com/{side}.png" for side in ("front", "back", "left")}
    for octree, status in ((63, 400), (513, 400), (64, 200), (512, 200)):
        assert api.submit({**views, "octree_resolution": octree}, MULTI_VIEW).status_code == status


def test_discounted_price_is_answered_and_billed(
    realistic: EmulatorServer, api: Any, make_image: Any
) -> None:
    quote = api.http.post("/api/v3/model/price", json={"model_id": MINI, "inputs": {}}).json()["data"]
    assert quote == {
        "model_id": MINI,
        "price": 0.02,
        "discounted_price": 0.018,
        "discount_rate": 0.1,
        "currency": "USD",
    }
    api.submit_ok({"image": api.upload(make_image())})
    assert realistic.config.balance == pytest.approx(100.0 - 0.018)
    assert realistic.stats.billed_usd == pytest.approx(0.018)
    realistic.config.profile = "default"
    realistic.config.discount_rate = 0.5
    quote = api.http.post("/api/v3/model/price", json={"model_id": MINI, "inputs": {}}).json()["data"]
    assert quote["discounted_price"] == 0.01 and quote["discount_rate"] == 0.5


# ---- expired links -------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["default", "realistic"])
def test_expired_links_answer_403_and_a_new_poll_renews_them(
    emu: EmulatorServer, api: Any, make_image: Any, profile: str
) -> None:
    emu.config.profile = profile
    emu.config.download_403_rate = 1.0
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    old = [url_of(item) for item in api.wait(pid)["outputs"]]
    first = httpx.get(old[-1])
    assert first.status_code == 403 and first.json() == EXPIRED
    fresh = [url_of(item) for item in api.poll(pid)["outputs"]]
    assert all(new.split("?")[0] != stale.split("?")[0] for new, stale in zip(fresh, old, strict=True))
    assert all(httpx.get(url).status_code == 200 for url in fresh)
    assert all(httpx.get(url).status_code == 403 for url in old)
    assert emu.stats.fault_count("download_403") == 1 and emu.stats.downloads_for(fresh[-1]) == 1


# ---- switches ------------------------------------------------------------------------------------------
def test_profile_is_a_switch(emu: EmulatorServer) -> None:
    assert httpx.patch(f"{emu.url}/_emulator/config", json={"profile": "realistic"}).status_code == 200
    assert emu.config.realistic
    bad = httpx.patch(f"{emu.url}/_emulator/config", json={"profile": "surreal", "latency_s": 9})
    assert bad.status_code == 400 and emu.config.profile == "realistic" and emu.config.latency_s != 9
    with pytest.raises(ValueError, match="profile"):
        EmulatorConfig(profile="surreal")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = [
        "--profile", "realistic", "--discount-rate", "0.2", "--cancel-rate", "0.1", "--timeout-rate",
        "0.05", "--unlisted-status-rate", "0.5", "--download-403-rate", "0.3", "--echo-api-key-in-errors",
        "--v2-obj", "--output-url-ttl", "60",
    ]  # fmt: skip
    config = config_from_args(parser.parse_args(flags))
    assert (config.profile, config.discount_rate, config.cancel_rate) == ("realistic", 0.2, 0.1)
    assert (config.timeout_rate, config.unlisted_status_rate, config.download_403_rate) == (0.05, 0.5, 0.3)
    assert config.echo_api_key_in_errors and config.v2_obj_output and config.output_url_ttl_s == 60
    defaults = config_from_args(parser.parse_args(["--profile", "realistic"]))
    assert defaults.effective_discount_rate == 0.1 and defaults.unlisted_status_rate_for(True) == 0.3
    assert EmulatorConfig().effective_discount_rate == 0.0 and defaults.unlisted_status_rate_for(False) == 0
