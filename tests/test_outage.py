"""The API dies in the middle of a run: the run ends on its own with a summary, what was paid for is
in the ledger, and a re-run pays for nothing twice."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from emulator import EmulatorConfig, EmulatorServer
from tests.conftest import client_env, run_flow, unused_url_emulator
from tests.test_flow import distinct_images, write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _stop_after_submits(server: EmulatorServer, accepted: int) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 60
        while server.stats.submits_accepted < accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_api_that_dies_mid_run_ends_the_run_and_a_rerun_pays_nothing_twice(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, output = write_csv(samples, distinct_images(samples, 6)), tmp_path / "out"
    dying = unused_url_emulator(EmulatorConfig(latency_s=2.0, jitter_s=0.0, max_concurrency=2, seed=3))
    for name, value in client_env(dying).items():
        monkeypatch.setenv(name, value)
    watcher = _stop_after_submits(dying, 2)

    started = time.monotonic()
    state, summary = run_flow(manifest=str(manifest), output=str(output), concurrency=2, queue_headroom=0)
    watcher.join(5)

    assert time.monotonic() - started < 120
    assert state.is_failed() and summary.total == 6 and summary.landed == 0
    assert summary.counts.get("submit_unknown", 0) == 0, summary.items  # every answered submit is known
    ledger = [json.loads(path.read_text()) for path in (output / ".hy3d" / "predictions").glob("*.json")]
    paid = {entry["prediction_id"] for entry in ledger if entry["state"] == "submitted"}
    assert len(paid) == dying.stats.submits_accepted == 2
    assert not list((output / ".hy3d" / "claims").glob("*"))  # released

    with unused_url_emulator(EmulatorConfig(latency_s=0.2, jitter_s=0.05)) as back:
        for name, value in client_env(back).items():
            monkeypatch.setenv(name, value)
        _, again = run_flow(manifest=str(manifest), output=str(output), concurrency=2)
        # The two paid for on the dead server are not paid again: they wait for that API root.
        assert again.counts == {"completed": 4, "submit_unknown": 2}, again.items
        assert back.stats.submits_accepted == 4
