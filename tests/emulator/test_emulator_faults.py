"""Injected faults: 429 (with Retry-After), 5xx on poll and submit (billed or not), truncated downloads."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulator import EmulatorServer


def test_poll_429_carries_retry_after(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    emu.config.poll_429_rate = 1.0
    emu.config.retry_after_s = 2.0
    response = api.http.get(f"/api/v3/predictions/{pid}/result")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["code"] == 429
    emu.config.retry_after_s = None
    assert "retry-after" not in api.http.get(f"/api/v3/predictions/{pid}/result").headers
    emu.config.poll_429_rate = 0.0
    assert api.wait(pid)["status"] == "completed"
    assert emu.stats.fault_count("poll_429") == 2
    assert emu.stats.polls_for(pid) >= 3  # faulted polls are counted too


def test_poll_5xx_uses_the_configured_statuses(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    pid = api.submit_ok({"image": api.upload(make_image())})["id"]
    emu.config.poll_5xx_rate = 1.0
    emu.config.fault_5xx_statuses = (503,)
    response = api.http.get(f"/api/v3/predictions/{pid}/result")
    assert response.status_code == 503 and response.json()["code"] == 503
    emu.config.fault_5xx_statuses = (502,)
    gateway = api.http.get(f"/api/v3/predictions/{pid}/result")
    assert gateway.status_code == 502 and gateway.headers["content-type"].startswith("text/html")


def test_submit_429_is_not_billed(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    url = api.upload(make_image())
    emu.config.submit_429_rate = 1.0
    emu.config.retry_after_s = 0.5
    response = api.submit({"image": url})
    assert response.status_code == 429 and response.headers["retry-after"] == "0.5"
    assert emu.stats.submits_received == 1 and emu.stats.submits_accepted == 0
    assert emu.config.balance == 100.0


def test_submit_rate_limit_per_minute(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    url = api.upload(make_image())
    emu.config.max_submits_per_minute = 2
    statuses = [api.submit({"image": url}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert emu.stats.submits_accepted == 2


@pytest.mark.parametrize(
    ("status", "accepted_switch", "billed"),
    [(502, True, True), (504, True, True), (502, False, False), (500, True, False), (503, True, False)],
)
def test_submit_5xx_accepted_or_not(
    emu: EmulatorServer, api: Any, make_image: Any, status: int, accepted_switch: bool, billed: bool
) -> None:
    url = api.upload(make_image())
    emu.config.submit_5xx_rate = 1.0
    emu.config.fault_5xx_statuses = (status,)
    emu.config.submit_5xx_accepted = accepted_switch
    response = api.submit({"image": url})
    assert response.status_code == status
    assert emu.stats.submits_accepted == (1 if billed else 0)
    assert len(emu.state.store.predictions) == (1 if billed else 0)
    assert emu.config.balance == pytest.approx(100.0 - (0.02 if billed else 0.0))
    if billed:  # the prediction the client never heard of runs to completion anyway
        (prediction,) = emu.state.store.predictions.values()
        emu.config.submit_5xx_rate = 0.0
        assert api.wait(prediction.id)["status"] == "completed"


def test_truncated_download(emu: EmulatorServer, api: Any, make_image: Any) -> None:
    data = api.wait(api.submit_ok({"image": api.upload(make_image())})["id"])
    url = data["outputs"][0]
    emu.config.download_truncate_rate = 1.0
    received = 0
    declared = 0
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        declared = int(response.headers["content-length"])
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert 0 < received < declared
    emu.config.download_truncate_rate = 0.0
    full = httpx.get(url)
    assert len(full.content) == declared
    assert emu.stats.downloads_truncated == 1
    assert emu.stats.downloads_for(url) == 2
