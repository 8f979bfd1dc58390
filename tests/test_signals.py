"""Ctrl-C and SIGTERM: ``hy3d run`` in its own process group, signalled mid-run against the emulator.

The first signal stops new submits, lets the submits in flight reach the ledger, writes the run
summary (the items not finished ``skipped``), releases the claims and exits 130 (SIGINT) / 143
(SIGTERM); re-running the same command finishes the rest without paying for anything twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import EmulatorConfig, EmulatorServer
from flows.pipeline import hard_exit, stop_on_signals
from tests.conftest import cli_command, client_env, unused_url_emulator
from tests.test_flow import distinct_images, write_csv

IMAGES = 12
CONCURRENCY = 3
HEADROOM = 1  # predictions queued on WaveSpeed beyond CONCURRENCY
SIGNAL_AFTER = 4  # accepted submits before the signal


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def slow_emulator() -> Iterator[EmulatorServer]:
    """Predictions take ~1 s and submits are answered up to 0.4 s after they are accepted, so
    that a signal finds predictions waiting and a submit in flight."""
    config = EmulatorConfig(
        latency_s=1.0, jitter_s=0.2, seed=3, max_concurrency=CONCURRENCY, submit_answer_delay_s=0.4
    )
    with unused_url_emulator(config) as server:
        yield server


def _run(
    args: list[str], env: dict[str, str], folder: Path, name: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    command, full_env = cli_command(args, env)
    if env.get("PREFECT_API_URL") == "":  # no server: the CLI starts a temporary one
        del full_env["PREFECT_API_URL"]
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            env=full_env,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    return process, out, err


def _interrupted_then_resumed(
    emulator: EmulatorServer,
    samples: Path,
    tmp_path: Path,
    sig: signal.Signals,
    env: dict[str, str],
    rerun_env: dict[str, str],
) -> None:
    manifest = write_csv(samples, distinct_images(samples, IMAGES))
    output = tmp_path / "out"
    args = [
        "run",
        str(manifest),
        "--output",
        str(output),
        "--concurrency",
        str(CONCURRENCY),
        "--queue-headroom",
        str(HEADROOM),
    ]
    process, out, err = _run(args, env, tmp_path, "first")
    try:
        deadline = time.monotonic() + 150  # a first temporary server start takes 10-40 s
        while emulator.stats.submits_accepted < SIGNAL_AFTER:
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the run never reached its submits"
            time.sleep(0.02)
        received_at_signal = emulator.stats.submits_received
        os.killpg(process.pid, sig)  # the whole group, as Ctrl-C in a terminal does
        signalled = time.monotonic()
        code = process.wait(timeout=30)
        stopped_in = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 128 + sig, f"exit {code}\n{stdout}\n{stderr}"
    assert stopped_in < 15, stopped_in
    # Nothing new was sent after the signal beyond what was already under way.
    received = emulator.stats.submits_received
    assert received - received_at_signal <= CONCURRENCY + HEADROOM, (received_at_signal, received)
    assert emulator.stats.submits_accepted == received  # every submit sent was answered
    assert "TerminationSignal" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    said = [line for line in stderr.splitlines() if line.startswith("hy3d:")]  # the rest is Prefect's log
    assert len(said) == 1 and "interrupted" in said[0], stderr
    assert "re-run the same command" in said[0], said[0]
    # The run summary, as a normal run writes it, with what was not finished as skipped.
    (summary_path,) = (output / "runs").glob("*.json")
    summary = json.loads(summary_path.read_text())
    assert summary["total"] == IMAGES
    assert "interrupted" in summary["stop_reason"]
    skipped = [item for item in summary["items"] if item["status"] == "skipped"]
    assert skipped and all("interrupted" in item["error"] for item in skipped), summary["items"]
    assert {item["status"] for item in summary["items"]} <= {"completed", "skipped"}, summary["counts"]
    # Waits that were given up kept their prediction: the ledger has every id that was paid for.
    ledger = [json.loads(path.read_text()) for path in (output / ".hy3d" / "predictions").glob("*.json")]
    assert len(ledger) == received
    assert all(entry["state"] == "submitted" and entry["prediction_id"] for entry in ledger), ledger
    assert not list((output / ".hy3d" / "claims").glob("*")), "claims left behind"

    # The same command again: everything lands, and nothing is paid for twice.
    again, out, err = _run(args, rerun_env, tmp_path, "again")
    assert again.wait(timeout=120) == 0, out.read_text() + err.read_text()
    assert f"{IMAGES}/{IMAGES} meshes landed" in out.read_text()
    assert emulator.stats.submits_accepted == emulator.stats.submits_received == IMAGES


@pytest.mark.usefixtures("prefect_harness")
def test_ctrl_c_stops_submitting_writes_the_summary_and_a_rerun_pays_nothing_twice(
    slow_emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """SIGINT to the process group, with the temporary Prefect server the CLI starts when no
    PREFECT_API_URL is set (a terminal's Ctrl-C reaches every process of the foreground group: the
    server must outlive it to record the run's end). The re-run uses the session's server (a
    temporary server takes 10-40 s to start; the submit cache is in the shared result storage)."""
    env = {
        **client_env(slow_emulator),
        "PREFECT_API_URL": "",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    _interrupted_then_resumed(
        slow_emulator, samples, tmp_path, signal.SIGINT, env, rerun_env=client_env(slow_emulator)
    )


@pytest.mark.usefixtures("prefect_harness")
def test_sigterm_stops_the_same_way_and_exits_143(
    slow_emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """SIGTERM, as Docker, Kubernetes or a Prefect worker send it (here with a Prefect server)."""
    env = client_env(slow_emulator)
    _interrupted_then_resumed(slow_emulator, samples, tmp_path, signal.SIGTERM, env, rerun_env=env)


def test_first_signal_stops_once_then_a_further_one_exits() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    reasons: list[str] = []

    def handlers() -> dict[signal.Signals, object]:
        return {sig: signal.getsignal(sig) for sig in before}

    async def go() -> None:
        had = handlers()  # asyncio.run's own SIGINT handler among them
        async with stop_on_signals():
            pass
        assert handlers() == had  # a run that was not interrupted gives the handlers back
        async with stop_on_signals() as interruption:
            interruption.on_stop(reasons.append)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            late: list[str] = []
            interruption.on_stop(late.append)  # a listener added after the signal hears it at once
            assert late == ["interrupted by SIGTERM"]
        assert set(handlers().values()) == {hard_exit}  # from now on a signal exits at once

    try:
        asyncio.run(go())
        assert reasons == ["interrupted by SIGTERM"]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_second_signal_exits_at_once() -> None:
    script = (
        "import asyncio, os, signal\n"
        "from flows.pipeline import hard_exit, stop_on_signals\n"
        "async def go():\n"
        "    async with stop_on_signals() as interruption:\n"
        "        interruption.on_stop(lambda reason: print(reason, flush=True))\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        await asyncio.sleep(0.2)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        await asyncio.sleep(30)\n"
        "asyncio.run(go())\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stdout == "interrupted by SIGINT\n"
    assert time.monotonic() - started < 15
