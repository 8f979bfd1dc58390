"""Never pay twice, never lose a mesh: resume after a crash, ambiguous submits, concurrent runs,
verified downloads and retries of what failed — all against the emulator's own counts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorServer
from tests.conftest import cli_command, client_env, run_cli, run_flow
from tests.test_flow import NAMES, assert_landed, write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def ball(samples: Path) -> Path:
    """A one-row manifest: the red ball, as item "ball"."""
    return write_csv(samples, [("ball", "red-ball.png")])


@pytest.fixture
def four(samples: Path) -> Path:
    """A manifest of the four samples, each named after its file."""
    return write_csv(samples, [(Path(n).stem, n) for n in NAMES])


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def run_args(four: Path, output: Path) -> list[str]:
    """``hy3d run`` of the four samples into ``output``, four at a time."""
    return ["run", str(four), "--output", str(output), "--concurrency", "4"]


def ledger_files(output: Path) -> list[Path]:
    """The write-ahead ledger: one JSON file a prediction under DEST/.hy3d/predictions."""
    return sorted((output / ".hy3d" / "predictions").glob("*.json"))


def ledger_entries(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in ledger_files(output)]


def interrupt_then_edit_ledger(manifest: Path, output: Path, **changes: Any) -> None:
    """Run the flow with a wait too short for the prediction to finish, which leaves exactly one
    ledger entry behind, then overwrite that entry's ``changes`` (as a crash or age would)."""
    run_flow(manifest=str(manifest), output=str(output), wait_timeout_s=0.05)
    (path,) = ledger_files(output)
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, **changes}))


def rerun_lands(manifest: Path, output: Path, **parameters: Any) -> dict:
    """Run the flow again: it completes and "ball" lands; returns its metadata."""
    state, _ = run_flow(manifest=str(manifest), output=str(output), **parameters)
    assert state.is_completed(), state.message
    return assert_landed(output, "ball")


def wait_for(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_timeout_then_rerun_resumes_from_the_ledger_alone(
    emulator: EmulatorServer, ball: Path, output: Path, prefect_harness: Path
) -> None:
    emulator.config.latency_s, emulator.config.jitter_s = 2.5, 0.0

    state, summary = run_flow(manifest=str(ball), output=str(output), wait_timeout_s=0.5)

    assert state.is_failed()
    assert summary.counts == {"timeout": 1}
    assert any("resumes polling" in advice for advice in summary.advice)
    (entry,) = ledger_entries(output)
    assert entry["state"] == "submitted"
    assert entry["prediction_id"] == summary.items[0].prediction_id
    # Forget Prefect's cache entirely: resuming must rest on the output's own ledger.
    shutil.rmtree(prefect_harness)
    prefect_harness.mkdir()

    metadata = rerun_lands(ball, output)

    assert metadata["prediction"]["id"] == entry["prediction_id"]
    assert metadata["prediction"]["reused"] is True
    assert emulator.stats.submits_received == 1


def test_kill_9_while_waiting_then_rerun_pays_nothing_twice(
    emulator: EmulatorServer, run_args: list[str], output: Path, tmp_path: Path
) -> None:
    emulator.config.latency_s, emulator.config.max_concurrency = 3.0, 8
    command, env = cli_command(run_args, client_env(emulator))

    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: len([e for e in ledger_entries(output) if e["state"] == "submitted"]) == 4)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    assert emulator.stats.submits_accepted == 4
    assert not list(output.glob("*/mesh.glb"))  # killed while the predictions were still running

    rerun = run_cli(run_args, client_env(emulator), tmp_path)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert emulator.stats.submits_received == 4
    for name in NAMES:
        assert_landed(output, Path(name).stem)
    assert not list(output.rglob("*.partial"))


def test_a_submit_in_flight_at_a_crash_is_not_resent(
    emulator: EmulatorServer, ball: Path, output: Path
) -> None:
    """A write-ahead intent without a prediction id means the request may have been accepted."""
    # What a kill -9 between sending the submit and reading its answer leaves behind:
    interrupt_then_edit_ledger(ball, output, state="submitting", prediction_id=None)
    submits = emulator.stats.submits_received

    state, summary = run_flow(manifest=str(ball), output=str(output))

    assert state.is_failed()
    assert summary.counts == {"submit_unknown": 1}
    assert "in flight" in summary.items[0].error
    assert emulator.stats.submits_received == submits


def test_ambiguous_submit_is_recorded_explained_and_resent_only_when_asked(
    emulator: EmulatorServer, ball: Path, output: Path
) -> None:
    emulator.config.submit_5xx_rate, emulator.config.fault_5xx_statuses = 1.0, (502,)
    emulator.config.submit_5xx_accepted = True  # the server did create (and bill) the prediction

    state, summary = run_flow(manifest=str(ball), output=str(output))

    assert state.is_failed()
    assert summary.counts == {"submit_unknown": 1}
    assert "502" in summary.items[0].error
    assert any("--resubmit-unknown" in advice for advice in summary.advice)
    metadata = json.loads((output / "ball" / "metadata.json").read_text())
    assert metadata["status"] == "submit_unknown"
    assert (emulator.stats.submits_received, emulator.stats.submits_accepted) == (1, 1)

    emulator.config.submit_5xx_rate = 0.0
    state, summary = run_flow(manifest=str(ball), output=str(output))
    assert summary.counts == {"submit_unknown": 1}
    assert emulator.stats.submits_received == 1  # a plain re-run does not resend it

    metadata = rerun_lands(ball, output, resubmit_unknown=True)
    assert emulator.stats.submits_received == 2
    assert any("may have been accepted" in warning for warning in metadata["warnings"])


def test_two_runs_on_one_output_claim_each_image_once(
    emulator: EmulatorServer, samples: Path, run_args: list[str], output: Path
) -> None:
    emulator.config.latency_s, emulator.config.max_concurrency = 1.0, 8
    command, env = cli_command(run_args, client_env(emulator))

    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [run.communicate(timeout=240) for run in runs]

    assert [run.returncode for run in runs] == [0, 0], results
    for name in NAMES:
        assert emulator.stats.submits_for_image_bytes((samples / name).read_bytes()) == 1
        assert_landed(output, Path(name).stem)
    assert emulator.stats.submits_accepted == 4
    assert not list((output / ".hy3d" / "claims").glob("*.json"))  # released when done


def test_transient_failures_are_resubmitted_only_with_retry_failed(
    emulator: EmulatorServer, ball: Path, output: Path
) -> None:
    emulator.config.failure_rate, emulator.config.failure_codes = 1.0, (5003,)
    run_flow(manifest=str(ball), output=str(output))
    assert json.loads((output / "ball" / "metadata.json").read_text())["error"]["code"] == 5003

    emulator.config.failure_rate = 0.0
    _state, summary = run_flow(manifest=str(ball), output=str(output))
    assert summary.counts == {"failed": 1}
    assert any("--retry-failed" in advice for advice in summary.advice)
    assert emulator.stats.submits_received == 1  # a re-run re-reads the failure, pays nothing

    metadata = rerun_lands(ball, output, retry_failed=True)
    assert emulator.stats.submits_received == 2
    assert any("5003" in warning for warning in metadata["warnings"])


def test_permanent_failures_are_not_resubmitted_even_with_retry_failed(
    emulator: EmulatorServer, missing_image_url: str, tmp_path: Path, output: Path
) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text(f"{missing_image_url}\n")  # reaches WaveSpeed: 1402
    run_flow(manifest=str(manifest), output=str(output))
    _state, summary = run_flow(manifest=str(manifest), output=str(output), retry_failed=True)
    assert summary.counts == {"failed": 1}
    assert summary.items[0].error_code == 1402
    assert emulator.stats.submits_received == 1


def test_expired_prediction_is_submitted_anew_with_a_warning(
    emulator: EmulatorServer, ball: Path, tmp_path: Path
) -> None:
    emulator.config.retention_s = 1.0
    run_flow(manifest=str(ball), output=str(tmp_path / "first"))
    time.sleep(1.2)  # past the emulator's retention: the cached prediction answers 404 now

    metadata = rerun_lands(ball, tmp_path / "second")

    assert any("no longer exists" in warning for warning in metadata["warnings"])
    assert emulator.stats.submits_accepted == 2


def test_ledger_older_than_retention_is_submitted_anew(
    emulator: EmulatorServer, ball: Path, output: Path
) -> None:
    interrupt_then_edit_ledger(ball, output, recorded_at="2026-01-01T00:00:00+00:00")

    metadata = rerun_lands(ball, output)

    assert any("7-day retention" in warning for warning in metadata["warnings"])
    assert emulator.stats.submits_accepted == 2


def test_truncated_downloads_and_poll_faults_are_retried(
    emulator: EmulatorServer, four: Path, output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = emulator.config
    config.download_truncate_rate, config.poll_429_rate, config.poll_5xx_rate = 0.7, 0.2, 0.2
    # Harsh rates, so that some download is truncated (all four whole: 0.3 ** 4, under 1 %), and
    # enough attempts that the run cannot lose by bad luck (0.7 ** 30 per request; retry waits are
    # skipped in tests), so the test checks the retrying, not the dice.
    monkeypatch.setenv("WAVESPEED_REQUEST_ATTEMPTS", "30")

    state, _summary = run_flow(manifest=str(four), output=str(output))

    assert state.is_completed(), state.message
    for name in NAMES:
        assert_landed(output, Path(name).stem)
    assert emulator.stats.downloads_truncated > 0
    assert emulator.stats.fault_count("poll_429") > 0
    assert not list(output.rglob("*.partial"))
    assert emulator.stats.submits_accepted == 4
