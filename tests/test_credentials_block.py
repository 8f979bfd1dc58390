"""The WaveSpeed Credentials block: Prefect's standard block checks, a real save/load through the
session's Prefect API, settings resolution (block or env), and ``prefect block register``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from tasks.client import DEFAULT_BASE_URL, WaveSpeedClient, WaveSpeedSettings
from tasks.credentials import (
    WaveSpeedCredentials,
    aresolve_settings,
    resolve_settings,
)
from tasks.errors import CredentialsBlockNotFoundError, MissingAPIKeyError
from tests.conftest import run_process

ROOT = Path(__file__).resolve().parents[1]
KEY = "ws-test-key-5f1c9d2e7a"  # distinctive, so a leak anywhere is easy to spot


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WAVESPEED_* variables and no .env file from the developer's machine."""
    for name in list(os.environ):
        if name.startswith("WAVESPEED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


SetEnv = Callable[..., None]


@pytest.fixture
def wavespeed_env(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """Sets WAVESPEED_* variables, named by keyword without the prefix, over a clean environment."""

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"WAVESPEED_{name.upper()}", value)

    return set_env


class TestWaveSpeedCredentialsStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return WaveSpeedCredentials

    @pytest.mark.skip(reason="downloads the logo from the internet, which this environment cannot reach")
    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pass


# -- the block on its own (no API) ---------------------------------------------------------------


def test_defaults_and_metadata() -> None:
    block = WaveSpeedCredentials(api_key=SecretStr(KEY))
    assert block.base_url == DEFAULT_BASE_URL
    assert WaveSpeedCredentials.get_block_type_slug() == "wavespeed-credentials"
    assert WaveSpeedCredentials.get_block_type_name() == "WaveSpeed Credentials"
    schema = WaveSpeedCredentials.model_json_schema()
    assert "api_key" in schema["required"]
    assert schema.get("secret_fields") == ["api_key"]


def test_api_key_is_required_and_base_url_must_be_http() -> None:
    with pytest.raises(ValidationError):
        WaveSpeedCredentials()  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="http"):
        WaveSpeedCredentials(api_key=SecretStr(KEY), base_url="api.wavespeed.ai")


def test_the_key_never_shows(caplog: pytest.LogCaptureFixture, clean_env: None) -> None:
    block = WaveSpeedCredentials(api_key=KEY)  # a plain str is accepted, and kept as a SecretStr
    assert isinstance(block.api_key, SecretStr)
    with caplog.at_level(logging.DEBUG):
        client = block.get_client()
        shown = [
            repr(block),
            str(block),
            str(block.model_dump()),
            str(block.model_dump(mode="json")),
            block.model_dump_json(),
            repr(block.settings()),
            str(block.settings().model_dump()),
            repr(client),
        ]
    shown.extend(record.getMessage() for record in caplog.records)
    for text in shown:
        assert KEY not in text
    assert block.model_dump(mode="json")["api_key"] == "**********"
    assert client.settings.api_key is not None
    assert client.settings.api_key.get_secret_value() == KEY


def test_get_client_carries_the_block_key_and_url_over_env(wavespeed_env: SetEnv) -> None:
    wavespeed_env(api_key="env-key", base_url="http://env.invalid", read_timeout_s="7")
    block = WaveSpeedCredentials(api_key=SecretStr(KEY), base_url="http://127.0.0.1:9/")
    client = block.get_client()
    assert isinstance(client, WaveSpeedClient)
    assert client.settings.api_key is not None
    assert client.settings.api_key.get_secret_value() == KEY
    assert client.settings.base_url == "http://127.0.0.1:9/"
    assert client.base_url == "http://127.0.0.1:9"
    assert client.settings.read_timeout_s == 7  # other settings still come from the environment
    asyncio.run(client.aclose())


def test_resolve_settings_none_reads_the_environment(wavespeed_env: SetEnv) -> None:
    wavespeed_env(api_key="env-key", base_url="http://env.example:8900", wait_timeout_s="42")
    for settings in (resolve_settings(None), asyncio.run(aresolve_settings(None))):
        assert isinstance(settings, WaveSpeedSettings)
        assert settings.require_api_key().get_secret_value() == "env-key"
        assert settings.base_url == "http://env.example:8900"
        assert settings.wait_timeout_s == 42


def test_resolve_settings_none_without_env_has_no_key(clean_env: None) -> None:
    settings = resolve_settings(None)
    assert settings.api_key is None
    assert settings.base_url == DEFAULT_BASE_URL


# -- through a real (test-harness) Prefect API ---------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
class TestAgainstPrefectAPI:
    def test_save_and_load_round_trip(self, caplog: pytest.LogCaptureFixture) -> None:
        name = _name()
        with caplog.at_level(logging.DEBUG):
            WaveSpeedCredentials(api_key=SecretStr(KEY), base_url="http://127.0.0.1:8900").save(name)
            loaded = WaveSpeedCredentials.load(name)
        assert all(KEY not in record.getMessage() for record in caplog.records)
        assert isinstance(loaded, WaveSpeedCredentials)
        assert loaded.api_key.get_secret_value() == KEY
        assert loaded.base_url == "http://127.0.0.1:8900"
        assert loaded._block_document_name == name
        assert KEY not in repr(loaded)

    def test_resolve_settings_from_a_block_overrides_env(self, wavespeed_env: SetEnv) -> None:
        name = _name()
        WaveSpeedCredentials(api_key=SecretStr(KEY), base_url="http://block.example").save(name)
        wavespeed_env(api_key="env-key", base_url="http://env.example", poll_backoff="1.25")
        settings = resolve_settings(name)
        assert settings.require_api_key().get_secret_value() == KEY
        assert settings.base_url == "http://block.example"
        assert settings.poll_backoff == 1.25

    def test_resolve_settings_works_from_async_code(self) -> None:
        """``load`` dispatches to a coroutine inside an event loop; both resolvers still return settings."""
        name = _name()
        WaveSpeedCredentials(api_key=SecretStr(KEY)).save(name)

        async def both() -> tuple[WaveSpeedSettings, WaveSpeedSettings]:
            return resolve_settings(name), await aresolve_settings(name)

        for settings in asyncio.run(both()):
            assert isinstance(settings, WaveSpeedSettings)
            assert settings.require_api_key().get_secret_value() == KEY
            assert settings.base_url == DEFAULT_BASE_URL

    def test_a_missing_block_is_one_clear_error(self) -> None:
        name = "missing-name"
        with pytest.raises(CredentialsBlockNotFoundError, match="'missing-name'") as caught:
            resolve_settings(name)
        error = caught.value
        assert isinstance(error, ValueError)
        assert isinstance(error, MissingAPIKeyError)
        assert error.block_name == name
        assert "WaveSpeed Credentials" in str(error)
        assert error.__suppress_context__ and error.__cause__ is None  # no chained Prefect traceback

        with pytest.raises(CredentialsBlockNotFoundError, match="'missing-name'"):
            asyncio.run(aresolve_settings(name))

    def test_cli_registers_the_block_type(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import BlockTypeUpdate
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_URL

        # Earlier saves register the type implicitly: make the server's copy stale first, so only
        # the CLI can bring it back (run alone, the CLI creates it from scratch).
        with get_client(sync_client=True) as client:
            try:
                existing = client.read_block_type_by_slug("wavespeed-credentials")
            except ObjectNotFound:
                pass
            else:
                client.update_block_type(existing.id, BlockTypeUpdate(description="stale"))

        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        result = run_process(
            [str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "tasks.credentials"],
            env,
            ROOT,
            timeout_s=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Successfully registered 1 block" in result.stdout, result.stdout
        assert "WaveSpeed Credentials" in result.stdout

        with get_client(sync_client=True) as client:
            block_type = client.read_block_type_by_slug("wavespeed-credentials")
            schemas = client.read_block_schemas()
        assert block_type.name == "WaveSpeed Credentials"
        assert block_type.description == WaveSpeedCredentials.get_description()
        assert block_type.documentation_url is not None
        assert block_type.code_example is not None
        assert 'WaveSpeedCredentials.load("BLOCK_NAME")' in block_type.code_example
        fields = next(s.fields for s in schemas if s.block_type_id == block_type.id)
        assert fields["secret_fields"] == ["api_key"]
        assert fields["required"] == ["api_key"]
