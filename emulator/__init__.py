"""A loopback HTTP emulator of WaveSpeedAI's Hunyuan3D API (see docs/wavespeed-api.md).

Shares no code with the project's client on purpose: both are written against the contract.
"""

from emulator.app import create_app
from emulator.config import EmulatorConfig
from emulator.meshgen import image_to_glb, prompt_to_glb
from emulator.server import EmulatorServer
from emulator.stats import EmulatorStats

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorStats", "create_app", "image_to_glb", "prompt_to_glb"]
