"""The cost guard: estimate before paying, refuse or stop at the budget, record prices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator import EmulatorServer
from tasks.errors import BudgetExceededError
from tests.conftest import client_env, run_cli, run_flow
from tests.test_flow import write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_estimate_excludes_done_resumable_and_cached_items(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    emulator.config.prices["wavespeed-ai/hunyuan3d/v2-mini"] = 0.05
    output = tmp_path / "out"
    # "ball" lands in the output; "mug" is paid for elsewhere (the submit cache, another output).
    run_flow(manifest=str(write_csv(samples, [("ball", "red-ball.png")])), output=str(output))
    run_flow(manifest=str(write_csv(samples, [("mug", "blue-mug.png")])), output=str(tmp_path / "other"))
    manifest = write_csv(
        samples,
        [
            ("ball", "red-ball.png"),
            ("mug", "blue-mug.png"),
            ("star", "gold-star.png"),
            ("tree", "green-pyramid.jpg"),
        ],
    )
    submits = emulator.stats.submits_received

    result = run_cli(["estimate", str(manifest), "--output", str(output)], client_env(emulator), tmp_path)

    printed = result.stdout
    assert result.returncode == 0, result.stderr
    assert "items in the manifest: 4" in printed
    assert "already done in the output: 1" in printed
    assert "already paid for (resumed, not paid again): 1" in printed
    assert "to pay for: 2" in printed
    assert "price per item: $0.0500" in printed
    assert "total: $0.1000" in printed
    assert "account balance: $" in printed
    assert emulator.stats.submits_received == submits  # estimating pays for nothing


def test_price_depends_on_inputs(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = samples / "views.csv"
    manifest.write_text(
        "id,image,back_image_url,left_image_url\nmug,blue-mug.png,red-ball.png,gold-star.png\n"
    )
    model = "wavespeed-ai/hunyuan3d-v2-multi-view"
    args = ["estimate", str(manifest), "--model", model, "--input", "textured_mesh=true"]
    result = run_cli(args, client_env(emulator), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "total: $0.0600" in result.stdout  # textured meshes cost 3x


def test_max_cost_refuses_to_start(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = write_csv(
        samples, [("ball", "red-ball.png"), ("mug", "blue-mug.png"), ("star", "gold-star.png")]
    )

    state, error = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), max_cost=0.05)

    assert state.is_failed()
    assert isinstance(error, BudgetExceededError)
    assert "$0.0600" in str(error) and "3 item(s)" in str(error)
    assert emulator.stats.submits_received == 0 and emulator.stats.total_uploads == 0


def test_cli_max_cost_refusal_is_exit_2(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = write_csv(samples, [("ball", "red-ball.png"), ("mug", "blue-mug.png")])
    args = ["run", str(manifest), "--output", str(tmp_path / "out"), "--max-cost", "0.01"]
    result = run_cli(args, client_env(emulator), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "over max_cost" in result.stderr
    assert emulator.stats.submits_received == 0


def test_max_cost_stops_submitting_when_spending_would_pass_it(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """Estimated at $0 (both already paid), but retrying failures costs: the cap stops the second."""
    manifest = write_csv(samples, [("ball", "red-ball.png"), ("mug", "blue-mug.png")])
    output = tmp_path / "out"
    emulator.config.failure_rate, emulator.config.failure_codes = 1.0, (5003,)
    run_flow(manifest=str(manifest), output=str(output))
    emulator.config.failure_rate = 0.0
    submits = emulator.stats.submits_accepted

    state, summary = run_flow(manifest=str(manifest), output=str(output), retry_failed=True, max_cost=0.03)

    assert state.is_failed()
    assert emulator.stats.submits_accepted == submits + 1
    assert summary.cost_usd == pytest.approx(0.02)
    statuses = {item.id: item for item in summary.items}
    stopped = [item for item in statuses.values() if item.error and "over budget" in item.error]
    assert len(stopped) == 1
    assert sum(1 for item in summary.items if item.status == "completed") == 1


def test_price_is_recorded_in_metadata_and_summary(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    emulator.config.prices["wavespeed-ai/hunyuan3d/v2-mini"] = 0.03
    manifest = write_csv(samples, [("ball", "red-ball.png"), ("mug", "blue-mug.png")])
    output = tmp_path / "out"

    state, summary = run_flow(manifest=str(manifest), output=str(output), max_cost=1.0)

    assert state.is_completed(), state.message
    assert json.loads((output / "ball" / "metadata.json").read_text())["price_usd"] == 0.03
    assert summary.cost_usd == pytest.approx(0.06)
    written = json.loads(next((output / "runs").glob("*.json")).read_text())
    assert written["cost_usd"] == pytest.approx(0.06)
    assert {item["price_usd"] for item in written["items"]} == {0.03}
