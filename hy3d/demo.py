"""``hy3d demo``: the real flow, against a local emulator, on sample images shipped in the package."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def run_demo(output: str, *, latency_s: float) -> int:
    from emulator import EmulatorConfig, EmulatorServer
    from hy3d.cli import run_flow

    destination = Path(output).resolve()
    # The realistic profile: answers shaped as the real service's (nulls, signed URLs, object outputs).
    config = EmulatorConfig(latency_s=latency_s, jitter_s=min(0.5, latency_s / 4), profile="realistic")
    with EmulatorServer(config) as server:
        print(f"WaveSpeed emulator listening on {server.url}")
        # The flow reads its settings from the environment, as in production; point it at the emulator.
        os.environ["WAVESPEED_BASE_URL"] = server.url
        os.environ["WAVESPEED_API_KEY"] = server.api_key
        code = run_flow(
            str(SAMPLES / "manifest.csv"),
            str(destination),
            model="wavespeed-ai/hunyuan3d/v2-mini",
            concurrency=2,
            storage_options={},
            inputs={},
            wait_timeout_s=None,
        )
    meshes = sorted(destination.glob("*/mesh.glb"))
    print(f"\n{len(meshes)} meshes in {destination}:")
    for mesh in meshes:
        print(f"  {mesh}  ({mesh.stat().st_size:,} bytes, metadata: {mesh.parent / 'metadata.json'})")
    return code
