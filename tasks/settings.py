"""Client settings, read from ``WAVESPEED_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://api.wavespeed.ai"
DEFAULT_MODEL = "wavespeed-ai/hunyuan3d/v2-mini"


class WaveSpeedSettings(BaseSettings):
    """Everything the client needs; ``repr`` and logs show the key only as ``**********``."""

    model_config = SettingsConfigDict(env_prefix="WAVESPEED_", env_file=".env", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="WaveSpeed API key (Bearer token).")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root, without /api/v3.")

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

    request_attempts: int = Field(default=6, ge=1, description="Attempts for idempotent requests.")
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_s: float = Field(default=30.0, ge=0)

    max_output_bytes: int = Field(default=2 * 1024**3, gt=0, description="Refuse outputs larger than this.")
    concurrency: int = Field(default=2, ge=1, description="Predictions in flight (Bronze tier allows 2).")

    def require_api_key(self) -> SecretStr:
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise MissingAPIKeyError(
                "no WaveSpeed API key: set WAVESPEED_API_KEY (or pass a credentials block)"
            )
        return self.api_key


class MissingAPIKeyError(ValueError):
    """Configuration error: nothing can run without a key."""
