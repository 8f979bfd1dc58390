"""A loopback HTTP emulator of WaveSpeedAI's Hunyuan3D API (see docs/wavespeed-api.md).

Shares no code with the project's client on purpose: both are written against the contract.

The names below are imported on first use: ``hy3d``'s argument parser reads ``emulator.cli``'s flags
without paying for the app, uvicorn, numpy and trimesh (about a second) on every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.app import create_app
    from emulator.config import EmulatorConfig
    from emulator.meshgen import image_to_glb, prompt_to_glb
    from emulator.server import EmulatorServer
    from emulator.stats import EmulatorStats

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorStats", "create_app", "image_to_glb", "prompt_to_glb"]

_WHERE = {
    "create_app": "emulator.app",
    "EmulatorConfig": "emulator.config",
    "image_to_glb": "emulator.meshgen",
    "prompt_to_glb": "emulator.meshgen",
    "EmulatorServer": "emulator.server",
    "EmulatorStats": "emulator.stats",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emulator' has no attribute {name!r}")
