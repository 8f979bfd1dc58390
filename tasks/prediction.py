"""The prediction resource as the API returns it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Statuses after which a prediction never changes. The official SDK treats the last three as
# terminal too; anything unknown means "keep waiting".
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})

# Task error codes (data.code) after which a new submit of the same input may succeed.
TRANSIENT_TASK_CODES = frozenset({5000, 5003, 5004})


class Prediction(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str
    model: str = ""
    status: str
    outputs: list[str] = Field(default_factory=list)
    error: str = ""
    code: int = 0
    created_at: str | None = None
    execution_time_ms: float | None = Field(default=None, alias="executionTime")
    timings: dict[str, Any] = Field(default_factory=dict)
    has_nsfw_contents: list[bool] = Field(default_factory=list)

    @field_validator("error", mode="before")
    @classmethod
    def _none_to_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("code", mode="before")
    @classmethod
    def _none_to_zero(cls, value: Any) -> Any:
        return 0 if value is None else value

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @property
    def inference_ms(self) -> float | None:
        value = self.timings.get("inference")
        return float(value) if isinstance(value, int | float) else None

    def output_by_extension(self, *extensions: str) -> str | None:
        """The first output URL whose path ends with one of ``extensions`` (v3 models return several)."""
        for url in self.outputs:
            path = url.split("?", 1)[0].lower()
            if any(path.endswith(ext) for ext in extensions):
                return url
        return None
