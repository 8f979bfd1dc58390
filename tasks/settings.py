"""Client settings, read from ``WAVESPEED_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.errors import InvalidSettingsError, MissingAPIKeyError

DEFAULT_BASE_URL = "https://api.wavespeed.ai"
DEFAULT_MODEL = "wavespeed-ai/hunyuan3d/v2-mini"


class WaveSpeedSettings(BaseSettings):
    """Everything the client needs; ``repr`` and logs show the key only as ``**********``."""

    model_config = SettingsConfigDict(env_prefix="WAVESPEED_", env_file=".env", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="WaveSpeed API key (Bearer token).")
    base_url: str = Field(
        default=DEFAULT_BASE_URL, description="API root, without /api/v3: http(s)://host[:port][/path]."
    )
    check_image_urls: bool = Field(
        default=True,
        description="Before paying, ask each http(s) image URL of the manifest for its headers (HEAD, "
        "or a 1-byte GET): a 4xx answer rejects the row. Turn off for URLs only WaveSpeed can reach.",
    )

    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0, description="Per request; also bounds each read.")
    upload_timeout_s: float = Field(default=300.0, gt=0)
    upload_method: Literal["binary", "presigned"] = Field(
        default="binary",
        description="binary: POST /media/upload/binary; presigned: POST /media/uploads then PUT.",
    )

    poll_initial_interval_s: float = Field(default=2.0, gt=0, description="Docs: no faster than 2 s.")
    poll_max_interval_s: float = Field(default=15.0, gt=0)
    poll_backoff: float = Field(default=1.5, ge=1.0, description="Interval growth factor per poll.")
    wait_timeout_s: float = Field(default=900.0, gt=0, description="Overall deadline for one prediction.")

    webhook_url: str | None = Field(
        default=None,
        description="Public http(s) URL that reaches webhook_listen (reverse proxy, tunnel): WaveSpeed "
        "POSTs each finished prediction there and the run learns of it at once. Unset: polls only.",
    )
    webhook_listen: str = Field(
        default="127.0.0.1:8787", description="host:port the webhook receiver binds (webhook_url only)."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Webhook signing secret; default: asked of GET /api/v3/webhook/secret."
    )
    webhook_poll_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="While deliveries arrive, polls are put off by this much (they only catch lost ones).",
    )

    request_attempts: int = Field(default=6, ge=1, description="Attempts for idempotent requests.")
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_s: float = Field(default=30.0, ge=0)

    max_output_bytes: int = Field(default=2 * 1024**3, gt=0, description="Refuse outputs larger than this.")
    concurrency: int = Field(default=2, ge=1, description="Predictions in flight (Bronze tier allows 2).")

    @field_validator("base_url")
    @classmethod
    def _api_root(cls, value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"WAVESPEED_BASE_URL {value!r} needs a scheme and host, e.g. {DEFAULT_BASE_URL}")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("webhook_url must be an http(s) URL (WaveSpeed wants https)")
        return value.strip()

    def require_api_key(self) -> SecretStr:
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise MissingAPIKeyError(
                "no WaveSpeed API key: set WAVESPEED_API_KEY (or pass a credentials block)"
            )
        return self.api_key


def load_settings(**values: Any) -> WaveSpeedSettings:
    """:class:`WaveSpeedSettings` from the environment (``values`` win), or one
    :class:`InvalidSettingsError` naming each bad variable and its value (not pydantic's
    multi-line report)."""
    try:
        return WaveSpeedSettings(**values)
    except ValidationError as exc:
        problems = []
        for detail in exc.errors():
            name = "WAVESPEED_" + "_".join(str(part) for part in detail["loc"]).upper()
            if detail["type"] == "value_error":  # our validators: the message says it all
                message = str(detail["msg"]).removeprefix("Value error, ")
                problems.append(message if message.startswith(name) else f"{name}: {message}")
            elif "KEY" in name or "SECRET" in name:  # never echo a secret
                problems.append(f"{name}: {detail['msg']}")
            else:
                problems.append(f"{name} {detail.get('input')!r}: {detail['msg']}")
        raise InvalidSettingsError("; ".join(problems)) from None
