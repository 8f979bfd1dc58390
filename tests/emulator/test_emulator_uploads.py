"""Both upload routes, the unauthenticated CDN, 413."""

from __future__ import annotations

from typing import Any

import httpx

from emulator import EmulatorServer


def test_binary_upload_is_served_unauthenticated(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = make_image()
    response = api.http.post("/api/v3/media/upload/binary", files={"file": ("dog.png", data, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200
    info = body["data"]
    assert info["size"] == len(data) and info["filename"] == "dog.png" and info["type"] == "image/png"
    assert info["download_url"].startswith(f"{emu.url}/cdn/media/")
    served = httpx.get(info["download_url"])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png"
    assert emu.stats.uploads["binary"] == 1 and emu.stats.total_uploads == 1


def test_binary_upload_needs_auth_and_a_file_field(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    files = {"file": ("a.png", make_image(), "image/png")}
    assert httpx.post(f"{emu.url}/api/v3/media/upload/binary", files=files).status_code == 401
    wrong_field = api.http.post("/api/v3/media/upload/binary", files={"image": ("a.png", b"x", "image/png")})
    assert wrong_field.status_code == 400 and "file" in wrong_field.json()["message"]
    assert emu.stats.total_uploads == 0


def test_presigned_upload_round_trip(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = make_image()
    created = api.http.post(
        "/api/v3/media/uploads", json={"filename": "cat.png", "size": len(data), "content_type": "image/png"}
    )
    assert created.status_code == 200
    slot = created.json()["data"]
    assert slot["upload"]["method"] == "PUT"
    assert slot["upload"]["headers"] == {"Content-Type": "image/png"}
    download_url = slot["download_url"]
    assert httpx.get(download_url).status_code == 404  # nothing there before the PUT

    put = httpx.put(slot["upload"]["url"], content=data, headers=slot["upload"]["headers"])
    assert put.status_code == 200
    served = httpx.get(download_url)
    assert served.status_code == 200 and served.content == data
    assert emu.stats.uploads["create"] == 1 and emu.stats.uploads["put"] == 1
    assert emu.stats.total_uploads == 1


def test_presigned_put_must_match_what_was_signed(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = make_image()
    slot = api.http.post(
        "/api/v3/media/uploads", json={"filename": "cat.png", "size": len(data), "content_type": "image/png"}
    ).json()["data"]
    url, headers = slot["upload"]["url"], slot["upload"]["headers"]
    assert httpx.put(url, content=data + b"extra", headers=headers).status_code == 400  # wrong size
    assert httpx.put(url, content=data, headers={"Content-Type": "image/jpeg"}).status_code == 400
    with_key = httpx.put(url, content=data, headers={**headers, "Authorization": f"Bearer {emu.api_key}"})
    assert with_key.status_code == 400  # the API key must not travel to the upload URL
    assert emu.api_key not in with_key.text
    assert emu.stats.upload_puts_with_authorization == 1
    assert httpx.get(slot["download_url"]).status_code == 404
    assert httpx.put(f"{emu.url}/cdn/upload/{'f' * 32}", content=data, headers=headers).status_code == 404
    assert emu.stats.total_uploads == 0


def test_presigned_create_validates_and_needs_auth(emu: EmulatorServer, api: Any) -> None:
    missing = api.http.post("/api/v3/media/uploads", json={"filename": "a.png", "size": 10})
    assert missing.status_code == 400 and "content_type" in missing.json()["message"]
    unauth = httpx.post(
        f"{emu.url}/api/v3/media/uploads", json={"filename": "a.png", "size": 10, "content_type": "image/png"}
    )
    assert unauth.status_code == 401


def test_uploads_above_the_limit_are_413(emu: EmulatorServer, api: Any) -> None:
    emu.config.max_upload_bytes = 1000
    big = b"\x89PNG" + bytes(2000)
    binary = api.http.post("/api/v3/media/upload/binary", files={"file": ("big.png", big, "image/png")})
    assert binary.status_code == 413 and binary.json()["code"] == 413
    presigned = api.http.post(
        "/api/v3/media/uploads", json={"filename": "big.png", "size": len(big), "content_type": "image/png"}
    )
    assert presigned.status_code == 413
    small = api.http.post("/api/v3/media/upload/binary", files={"file": ("ok.png", bytes(900), "image/png")})
    assert small.status_code == 200
    assert emu.stats.total_uploads == 1


def test_reuploads_of_the_same_bytes_count_as_one_input(
    emu: EmulatorServer, api: Any, make_image: Any
) -> None:
    data = make_image()
    first, second = api.upload(data), api.upload_presigned(data)
    assert first != second
    for url in (first, second):
        assert api.wait(api.submit_ok({"image": url})["id"])["status"] == "completed"
    assert emu.stats.submits_for_image_bytes(data) == 2
    assert emu.stats.submits_for_image_bytes(make_image(color=(1, 2, 3))) == 0
    assert len(emu.stats.submits_by_input) == 1
