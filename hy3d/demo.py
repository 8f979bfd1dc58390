"""``hy3d demo``: the real flow, against a local emulator, on sample images shipped in the package."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def run_demo(output: str, *, latency_s: float, run: Callable[..., int]) -> int:
    """Run the flow with ``run`` (``hy3d.cli.run_flow``) over the samples, against an emulator."""
    from emulator import EmulatorConfig, EmulatorServer
    from flows.options import RunOptions

    destination = Path(output).resolve()
    # The realistic profile: answers shaped as the real service's (nulls, signed URLs, object outputs).
    config = EmulatorConfig(latency_s=latency_s, jitter_s=min(0.5, latency_s / 4), profile="realistic")
    with EmulatorServer(config) as server:
        print(f"WaveSpeed emulator listening on {server.url}")
        # The flow reads its settings from the environment, as in production; point it at the emulator.
        os.environ["WAVESPEED_BASE_URL"] = server.url
        os.environ["WAVESPEED_API_KEY"] = server.api_key
        code = run(RunOptions(manifest=str(SAMPLES / "manifest.csv"), output=str(destination)))
    meshes = sorted(destination.glob("*/mesh.glb"))
    print(f"\n{len(meshes)} meshes in {destination}:")
    for mesh in meshes:
        print(f"  {mesh}  ({mesh.stat().st_size:,} bytes, metadata: {mesh.parent / 'metadata.json'})")
    return code
