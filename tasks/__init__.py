"""WaveSpeed Hunyuan3D client and the Prefect tasks over it (submit, wait, fetch)."""

__version__ = "0.1.0"
