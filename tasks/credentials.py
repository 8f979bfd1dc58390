"""A Prefect credentials block for WaveSpeed, and settings resolution from a block or the environment.

Register the block type with a Prefect API (so it shows up in the UI's Blocks catalogue)::

    prefect block register -m tasks.credentials

Then create one in the UI, or from Python::

    WaveSpeedCredentials(api_key="...").save("wavespeed")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.exceptions import ObjectNotFound
from pydantic import Field, SecretStr, field_validator

from tasks.client import DEFAULT_BASE_URL, WaveSpeedClient, WaveSpeedSettings, load_settings
from tasks.errors import CredentialsBlockNotFoundError


class WaveSpeedCredentials(CredentialsBlock):
    """Stores a WaveSpeed API key (and API root) for the Hunyuan3D flows.

    The key is stored as a secret: the Prefect UI, ``repr``, logs and ``model_dump()`` show it only
    as ``**********``. Every other client setting (timeouts, polling, retries) still comes from the
    ``WAVESPEED_*`` environment variables.

    Example:
        Load stored WaveSpeed credentials and make a client (in async code, load with
        ``await WaveSpeedCredentials.aload("BLOCK_NAME")`` instead):
        ```python
        from tasks.credentials import WaveSpeedCredentials

        wavespeed_credentials_block = WaveSpeedCredentials.load("BLOCK_NAME")
        client = wavespeed_credentials_block.get_client()  # then: async with client: ...
        ```
    """

    _block_type_name = "WaveSpeed Credentials"
    _block_type_slug = "wavespeed-credentials"
    _logo_url = "https://github.com/WaveSpeedAI.png"  # type: ignore[assignment]
    _documentation_url = "https://wavespeed.ai/docs/api-authentication"  # type: ignore[assignment]

    api_key: SecretStr = Field(
        default=...,
        title="API Key",
        description="WaveSpeed API key, sent as a Bearer token (create one at wavespeed.ai, API Keys).",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        title="Base URL",
        description="API root, without /api/v3; change it only for a proxy or an emulator.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        return value

    def settings(self) -> WaveSpeedSettings:
        """Client settings: the ``WAVESPEED_*`` environment, with this block's key and base URL."""
        return load_settings(api_key=self.api_key, base_url=self.base_url)

    def get_client(self) -> WaveSpeedClient:
        """A WaveSpeed client using this block's key and base URL: ``async with block.get_client()``."""
        self.logger.debug("WaveSpeed client for %s", self.base_url)
        return WaveSpeedClient(self.settings())


@contextlib.contextmanager
def _reporting_a_missing_block(block_name: str) -> Iterator[None]:
    """Raises CredentialsBlockNotFoundError when loading the block finds no block of that name."""
    try:
        yield
    except ValueError as exc:
        # Prefect 3.9 turns ObjectNotFound into a bare ValueError, chained; anything else (a validation
        # error of a stored document, say) is not "missing" and is left alone.
        if isinstance(exc.__cause__, ObjectNotFound):
            raise CredentialsBlockNotFoundError(
                block_name, WaveSpeedCredentials.get_block_type_name()
            ) from None
        raise


def resolve_settings(block_name: str | None) -> WaveSpeedSettings:
    """Settings from the named ``WaveSpeedCredentials`` block, or from ``WAVESPEED_*`` when ``None``.

    Synchronous in every context: safe from plain code, sync tasks and even inside a running event
    loop (where it blocks the loop for one API round trip; prefer :func:`aresolve_settings` there).
    Raises :class:`CredentialsBlockNotFoundError` when no block has that name, and
    :class:`~tasks.errors.InvalidSettingsError` for a setting that cannot work.
    """
    if block_name is None:
        return load_settings()
    with _reporting_a_missing_block(block_name):
        # ``load`` is ``@async_dispatch``ed: in an async context it would return a coroutine.
        # ``_sync=True`` makes it the synchronous implementation whatever the context.
        load: Any = WaveSpeedCredentials.load
        block: WaveSpeedCredentials = load(block_name, _sync=True)
    return block.settings()


async def aresolve_settings(block_name: str | None) -> WaveSpeedSettings:
    """Async twin of :func:`resolve_settings`, for async flows and tasks (does not block the loop)."""
    if block_name is None:
        return load_settings()
    with _reporting_a_missing_block(block_name):
        # Prefect's ``inject_client`` decorator erases ``aload``'s return type.
        block: WaveSpeedCredentials = await WaveSpeedCredentials.aload(block_name)
    return block.settings()


__all__ = [
    "WaveSpeedCredentials",
    "aresolve_settings",
    "resolve_settings",
]
