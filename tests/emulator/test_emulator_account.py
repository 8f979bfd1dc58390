"""Price and balance, stats counting, the control routes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from emulator import EmulatorServer

MULTI_VIEW = "wavespeed-ai/hunyuan3d-v2-multi-view"


def test_price_and_balance(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    price = api.http.post(
        "/api/v3/model/price", json={"model_id": "wavespeed-ai/hunyuan3d/v2-mini", "inputs": {}}
    )
    assert price.status_code == 200 and price.json()["data"]["price"] == pytest.approx(0.02)
    textured = api.http.post(
        "/api/v3/model/price", json={"model_id": MULTI_VIEW, "inputs": {"textured_mesh": True}}
    )
    assert textured.json()["data"]["price"] == pytest.approx(0.06)
    unknown = api.http.post("/api/v3/model/price", json={"model_id": "nope/nope", "inputs": {}})
    assert unknown.status_code == 404
    assert httpx.get(f"{emu.url}/api/v3/balance").status_code == 401

    assert api.http.get("/api/v3/balance").json()["data"]["balance"] == pytest.approx(100.0)
    url = api.upload(make_image())
    api.submit_ok({"image": url})
    emu.config.prices["wavespeed-ai/hunyuan3d/v2-mini"] = 0.5
    api.submit_ok({"image": url})
    assert api.http.get("/api/v3/balance").json()["data"]["balance"] == pytest.approx(99.48)
    assert emu.stats.billed_usd == pytest.approx(0.52)


def test_insufficient_balance_is_403_and_not_billed(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    emu.config.balance = 0.01
    response = api.submit({"image": api.upload(make_image())})
    assert response.status_code == 403
    assert emu.stats.submits_accepted == 0 and emu.config.balance == pytest.approx(0.01)


def test_polls_downloads_and_requests_are_counted(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    data = api.wait(pid)
    polls = emu.stats.polls_for(pid)
    assert polls >= 1 and emu.stats.total_polls == polls
    assert emu.stats.requests_for("GET", "/api/v3/predictions/{prediction_id}/result", 200) == polls
    httpx.get(data["outputs"][0])
    httpx.get(data["outputs"][0])
    assert emu.stats.downloads_for(data["outputs"][0]) == 2 and emu.stats.total_downloads == 2
    snapshot = httpx.get(f"{emu.url}/_emulator/stats").json()
    assert snapshot["polls_by_prediction"] == {pid: polls}
    assert snapshot["submits_accepted"] == 1 and snapshot["completed"] == 1
    assert snapshot["peak_in_flight"] == 1 and snapshot["in_flight"] == 0
    assert snapshot["requests"]["POST /api/v3/media/upload/binary 200"] == 1


def test_reset_forgets_everything(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    url = api.upload(make_image())
    pid = api.submit_ok({"image": url})["id"]
    assert httpx.post(f"{emu.url}/_emulator/reset").json() == {"ok": True}
    assert api.http.get(f"/api/v3/predictions/{pid}/result").status_code == 404
    assert httpx.get(url).status_code == 404
    emu.reset()
    snapshot = emu.stats.snapshot()
    assert snapshot["submits_accepted"] == 0 and snapshot["requests"] == {} and snapshot["in_flight"] == 0


def test_patch_config_at_runtime(emu: EmulatorServer, api: Any) -> None:
    response = httpx.patch(
        f"{emu.url}/_emulator/config",
        json={"latency_s": 2, "failure_codes": [1200, 5003], "retry_after_s": None},
    )
    assert response.status_code == 200
    assert emu.config.latency_s == 2.0 and emu.config.failure_codes == (1200, 5003)
    assert response.json()["api_key"] == "***"
    assert httpx.patch(f"{emu.url}/_emulator/config", json={"nope": 1}).status_code == 400
    assert httpx.patch(f"{emu.url}/_emulator/config", json={"latency_s": "fast"}).status_code == 400
    assert emu.config.latency_s == 2.0


def test_retention_expires_predictions_and_outputs(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    emu.config.retention_s = 0.0
    assert api.http.get(f"/api/v3/predictions/{data['id']}/result").status_code == 404
    assert httpx.get(data["outputs"][0]).status_code == 404
    emu.config.retention_s = None
    assert httpx.get(data["outputs"][0]).status_code == 200


def test_padded_outputs_for_benchmarks(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    emu.config.mesh_bytes_target = 2_000_000
    data = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    body = httpx.get(data["outputs"][0]).content
    assert 2_000_000 - 4 <= len(body) <= 2_000_000
    assert body[:4] == b"glTF"


def test_completion_timeline_records_when_the_client_noticed(
    emu: EmulatorServer, api: Any, make_image: Any
) -> None:
    emu.config.latency_s = 0.2
    before = time.time()
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    assert api.poll(pid)["status"] in ("created", "processing")
    assert emu.stats.completion_lags() == {}
    time.sleep(0.5)  # completed meanwhile; nobody polled
    assert api.poll(pid)["status"] == "completed"
    api.poll(pid)
    snapshot = httpx.get(f"{emu.url}/_emulator/stats").json()
    accepted, completed = snapshot["accepted_at"][pid], snapshot["completed_at"][pid]
    noticed = snapshot["first_completed_poll_at"][pid]
    assert before <= accepted < snapshot["first_poll_at"][pid] < completed < noticed <= time.time()
    assert pid not in snapshot["first_download_at"]
    assert completed - accepted >= 0.2
    lag = emu.stats.completion_lags()[pid]
    assert lag == pytest.approx(noticed - completed) and 0.2 <= lag < 2.0
    assert snapshot["polls_after_completed"] == {pid: 1}
    httpx.get(api.poll(pid)["outputs"][0])
    assert noticed < emu.stats.snapshot()["first_download_at"][pid] <= time.time()
    summary = snapshot["completion_lag_s"]
    assert summary["count"] == 1 and summary["max"] == pytest.approx(lag)
    emu.reset()
    assert emu.stats.snapshot()["completion_lag_s"]["count"] == 0


def test_faulted_polls_do_not_count_as_noticed(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    pid = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])["id"]
    noticed = emu.stats.first_completed_poll_at[pid]
    emu.config.poll_429_rate = 1.0
    assert api.http.get(f"/api/v3/predictions/{pid}/result").status_code == 429
    assert emu.stats.first_completed_poll_at[pid] == noticed
    assert emu.stats.polls_after_completed[pid] == 0
