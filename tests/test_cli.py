"""The ``hy3d`` command: help, exit codes, and real runs in separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator import EmulatorServer
from hy3d.cli import main
from tests.conftest import client_env, closed_port, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command", [[], ["run"], ["run-sharded"], ["estimate"], ["demo"], ["emulator"], ["server"]]
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "usage: hy3d" in capsys.readouterr().out


def test_the_script_exits_quickly_with_its_code_and_all_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``hy3d`` script skips the interpreter's teardown (hy3d.cli.run_then_exit_quickly): exit
    codes and piped output are kept."""
    script = str(Path(sys.executable).parent / "hy3d")
    env = {**os.environ, "HY3D_SERVER_HOME": str(tmp_path / "none")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=120)

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    helped = run("run", "--help")
    assert helped.returncode == 0
    assert helped.stdout == capsys.readouterr().out  # every byte, though the pipe was block-buffered
    assert run("run").returncode == 2  # argparse's usage error
    status = run("server", "status")
    assert status.returncode == 0 and "no local Prefect server runs" in status.stdout, status


def test_missing_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    code = main(["run", str(ROOT / "hy3d/samples/manifest.csv"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "WAVESPEED_API_KEY" in err
    assert "Traceback" not in err


def test_unreadable_manifest_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", "wsk-anything")
    (tmp_path / "m.csv").write_text("picture,name\na.png,x\n")
    code = main(["run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "image" in err and "m.csv" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("prefect_harness")
def test_run_exit_codes_and_cross_process_cache(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = samples / "manifest.csv"
    manifest.write_text("id,image\nball,red-ball.png\nmug,blue-mug.png\n")
    env = client_env(emulator)

    first = run_cli(["run", str(manifest), "--output", str(tmp_path / "a")], env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2/2 meshes landed" in first.stdout
    assert emulator.stats.submits_accepted == 2

    # Another process, another destination: the content-keyed cache means nothing is paid again.
    second = run_cli(["run", str(manifest), "--output", str(tmp_path / "b")], env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert emulator.stats.submits_received == 2
    assert (tmp_path / "b" / "ball" / "mesh.glb").exists()

    # A failing item: exit 1, the failure named on stdout.
    emulator.config.failure_rate, emulator.config.failure_codes = 1.0, (5003,)
    manifest.write_text("id,image\nball,red-ball.png\nstar,gold-star.png\n")
    third = run_cli(["run", str(manifest), "--output", str(tmp_path / "a")], env, tmp_path)
    assert third.returncode == 1, third.stdout + third.stderr
    assert "star: failed" in third.stdout
    star = json.loads((tmp_path / "a" / "star" / "metadata.json").read_text())
    assert star["prediction"]["code"] == 5003

    # A rejected key: exit 2, one clear line, no traceback.
    wrong = run_cli(
        ["run", str(manifest), "--output", str(tmp_path / "c")],
        {**env, "WAVESPEED_API_KEY": "wsk-nope"},
        tmp_path,
    )
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "rejected the API key" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert "wsk-nope" not in wrong.stdout + wrong.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_demo_lands_the_sample_meshes(tmp_path: Path) -> None:
    result = run_cli(["demo", "--output", str(tmp_path / "demo"), "--latency", "0.3"], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    meshes = sorted(p.parent.name for p in (tmp_path / "demo").glob("*/mesh.glb"))
    assert meshes == ["blue-mug", "gold-star", "green-pyramid", "red-ball"]
    assert "4 meshes in" in result.stdout
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "demo").glob("*/mesh.glb")}
    # Run again: a new emulator on a new port, the same output. Nothing is paid or rewritten.
    again = run_cli(["demo", "--output", str(tmp_path / "demo"), "--latency", "0.3"], {}, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4/4 meshes landed (4 already_done)" in again.stdout
    assert "$0.0000 billed for new predictions" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "demo").glob("*/mesh.glb")} == written


def _run_samples_against(
    base_url: str, emulator: EmulatorServer, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`hy3d run` of the sample manifest into tmp_path/out with WAVESPEED_BASE_URL=base_url (the rest of
    the client's env from the emulator): the process and its seconds."""
    env = {**client_env(emulator), "WAVESPEED_BASE_URL": base_url}
    started = time.monotonic()
    result = run_cli(
        ["run", str(ROOT / "hy3d/samples/manifest.csv"), "-o", str(tmp_path / "out")], env, tmp_path
    )
    return result, time.monotonic() - started


@pytest.mark.usefixtures("prefect_harness")
def test_api_root_without_scheme_is_one_line_at_once(emulator: EmulatorServer, tmp_path: Path) -> None:
    bare = emulator.url.removeprefix("http://")  # "127.0.0.1:PORT": once, every item failed after 86 s

    result, elapsed = _run_samples_against(bare, emulator, tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"hy3d: error: WAVESPEED_BASE_URL {bare!r} needs a scheme and host, e.g. https://api.wavespeed.ai"
    ]
    assert result.stdout == ""
    assert elapsed < 10, elapsed
    assert sum(emulator.stats.requests.values()) == 0  # not even the key check
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_closed_port_is_one_line_naming_the_url_within_seconds(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Nothing listens there, so nothing can be counted: one line, no traceback, in seconds (it was a
    traceback per item after 102 s), and nothing written but the empty output folder. About 5 s: the
    process's start and ~2 s of tries; the bound leaves room for a loaded machine (11 s seen)."""
    url = f"http://127.0.0.1:{closed_port()}"

    result, elapsed = _run_samples_against(url, emulator, tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"hy3d: error: cannot reach the WaveSpeed API at {url}: connection refused"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert elapsed < 15, elapsed
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert sum(emulator.stats.requests.values()) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_repeated_row_problems_are_summarised(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """10,000 identical lines: 9,999 duplicate ids. The terminal and the flow's log show the first 20
    and count the rest; the run summary lists every one."""
    manifest = samples / "same.txt"
    manifest.write_text("red-ball.png\n" * 10_000)

    result = run_cli(
        ["run", str(manifest), "--output", str(tmp_path / "out")], client_env(emulator), tmp_path
    )

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    more = "… and 9979 more row problems (see the run summary)"
    for printed in (result.stdout, result.stderr):  # the CLI's summary; the flow's log
        assert sum("duplicate id" in line for line in printed.splitlines()) == 20
        assert sum(more in line for line in printed.splitlines()) == 1
    assert len(result.stdout.splitlines()) < 30
    [summary_path] = (tmp_path / "out" / "runs").glob("*.json")
    summary = json.loads(summary_path.read_text())
    invalid = [item for item in summary["items"] if item["status"] == "invalid"]
    assert len(invalid) == 9_999
    assert all("duplicate id 'red-ball'" in item["error"] for item in invalid)
    assert emulator.stats.submits_accepted == 1


def test_flags_become_the_flows_options_with_the_models_checks() -> None:
    """Every option is a flag made from flows/options.py: values are parsed and checked by the model."""
    from flows.options import RunOptions
    from hy3d.cli import build_parser, options_from_args

    flags = ["run", "m.csv", "-o", "out", "--formats", "WEB,Usdz", "--wait-timeout", "30", "--retry-failed"]
    flags += ["--storage-option", "endpoint_url=http://s3", "--input", "seed=7", "--credentials-block", ""]
    options = options_from_args(RunOptions, build_parser().parse_args(flags))
    assert options.formats == ("web", "usdz")
    assert (options.limits.wait_timeout_s, options.limits.retry_failed) == (30.0, True)
    assert options.advanced.storage_options == {"endpoint_url": "http://s3"}
    assert options.advanced.inputs == {"seed": 7}
    assert options.advanced.credentials_block is None  # an emptied field is no block
    assert options.concurrency == 2 and options.advanced.task_runs == "auto"  # the model's defaults
