"""The ``hy3d`` command: help, exit codes, and real runs in separate processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator import EmulatorServer
from hy3d.cli import main
from tests.conftest import client_env, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [[], ["run"], ["run-sharded"], ["estimate"], ["demo"], ["emulator"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "usage: hy3d" in capsys.readouterr().out


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
    assert "cost: $0.0000 billed" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "demo").glob("*/mesh.glb")} == written
