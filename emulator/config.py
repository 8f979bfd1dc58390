"""Runtime switches of the emulator. Mutable: tests and `PATCH /_emulator/config` change fields while the
server runs, and every request reads the current values."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from emulator.models import MODELS

DEFAULT_API_KEY = "wsk-emulator-key"
DEFAULT_PRICE_USD = 0.02
PROFILES = ("default", "realistic")
"""`default`: the documented shapes. `realistic`: the shapes public clients show (see the README)."""
REALISTIC_DISCOUNT_RATE = 0.1
REALISTIC_UNLISTED_STATUS_RATE = 0.3
V3_GRID = 480
"""`v3_sized`: vertices along the longer side (a relief of some 200-450 k faces, by the silhouette)."""
V3_TEXTURE_PX = 2048


def _default_prices() -> dict[str, float]:
    return dict.fromkeys(MODELS, DEFAULT_PRICE_USD)


@dataclass
class EmulatorConfig:
    profile: str = "default"
    """One of PROFILES. The profile in effect when a prediction is submitted shapes all its answers;
    uploads and prices follow the current profile."""

    # --- account -------------------------------------------------------------------------------
    api_key: str = DEFAULT_API_KEY
    """The only accepted `Authorization: Bearer <key>`."""
    prices: dict[str, float] = field(default_factory=_default_prices)
    """USD per prediction, by model id (multi-view with `textured_mesh: true` costs 3x)."""
    balance: float = 100.0
    """Account balance in USD; each accepted (billed) submit subtracts its price. A submit whose price
    exceeds the balance answers HTTP 403 (the real status is undocumented)."""
    max_concurrency: int = 2
    """Tasks processing at once; beyond it tasks stay `created` (FIFO). <= 0 means unlimited."""
    submit_answer_delay_s: float = 0.0
    """Each submit's answer is held a random time in [0, this] after the prediction is accepted, so
    concurrent submits are answered in another order than they were accepted (as over a network)."""
    max_submits_per_minute: int | None = None
    """Sliding-window submit rate limit (HTTP 429 beyond it); None disables it."""
    discount_rate: float | None = None
    """`POST /api/v3/model/price` answers `discounted_price` = price x (1 - rate), and submits bill the
    discounted price. None: 0.1 in the realistic profile, 0 otherwise."""

    # --- processing ----------------------------------------------------------------------------
    latency_s: float = 1.0
    jitter_s: float = 0.2
    """Processing time is uniform in [latency - jitter, latency + jitter], clamped at 0."""
    failure_rate: float = 0.0
    failure_codes: tuple[int, ...] = (5000,)
    """A task fails with probability `failure_rate`, with a code picked from `failure_codes`."""
    cancel_rate: float = 0.0
    timeout_rate: float = 0.0
    """A task ends `cancelled` / `timeout` (terminal, no outputs) with these probabilities."""
    unlisted_status_rate: float | None = None
    """Share of predictions whose polls answer a status the contract does not list (`queued` or
    `starting`) for the first half of their processing, before `processing`. None: 0.3 for predictions
    submitted under the realistic profile, 0 otherwise."""
    echo_api_key_in_errors: bool = False
    """Failed predictions' `error` quotes `Authorization: Bearer <api key>` (clients must scrub it)."""
    image_fetch_timeout_s: float = 10.0
    min_image_px: int = 128
    max_image_px: int = 5000
    max_image_bytes: int = 8 * 1024 * 1024
    """Input image limits (v3.1 docs): violations fail the task with code 1401."""
    webhook_secret: str = "whsec_ZW11bGF0b3Itd2ViaG9vay1zZWNyZXQ"
    """Signs webhook deliveries; `GET /api/v3/webhook/secret` answers it."""
    webhook_retries: int = 3
    webhook_retry_s: float = 1.0
    """A delivery not answered 2xx is retried up to `webhook_retries` times, after 1, 2, 4... x this."""
    sync_timeout_s: float = 30.0
    """`enable_sync_mode`: how long a submit blocks before answering `processing` with code 5004."""
    mesh_grid: int = 48
    mesh_texture_px: int = 256
    """The texture's longer side in pixels: the image scaled to it (an enlarged image gets a fine
    grain, as a baked texture has, so that it weighs what a real one does)."""
    v3_sized: bool = False
    """Meshes sized like Hunyuan3D v3's defaults: at least V3_GRID vertices along the longer side (some
    200-450 k faces) and a V3_TEXTURE_PX texture, whatever mesh_grid and mesh_texture_px say."""
    mesh_bytes_target: int | None = None
    """When set, every output GLB is padded (unused buffer tail) to about this many bytes."""
    v3_extra_outputs: bool = True
    """Hunyuan3D v3/v3.1 models return [preview .png, .glb]: clients must choose by extension."""
    v2_obj_output: bool = False
    """Hunyuan3D v2 models (mini, base, 2.1, multi-view) return a plain `.obj` text mesh, not a GLB."""
    output_url_ttl_s: int = 86400
    """Realistic profile: `X-Amz-Expires` of the signed output URLs (a poll signs them afresh)."""
    malformed_multiview_get_url: bool = True
    """Multi-view predictions carry the malformed `urls.get` (`...//api/v3/...`) seen in the wild."""
    retention_s: float | None = None
    """Predictions, outputs and uploads older than this answer 404 (real service: 7 days); None keeps them."""

    # --- faults --------------------------------------------------------------------------------
    submit_429_rate: float = 0.0
    submit_5xx_rate: float = 0.0
    submit_5xx_accepted: bool = True
    """A submit fault answering 502/504 still creates (and bills) the prediction when True."""
    poll_429_rate: float = 0.0
    poll_5xx_rate: float = 0.0
    fault_5xx_statuses: tuple[int, ...] = (500, 502, 503, 504)
    gateway_5xx_html: bool = True
    """502/504 fault answers carry a gateway-style HTML body instead of the JSON envelope."""
    retry_after_s: float | None = None
    """When set, 429 answers carry `Retry-After` with this many seconds (fractions kept, e.g. "0.5")."""
    webhook_loss_rate: float = 0.0
    """A webhook delivery attempt is lost on the way (never reaches the receiver) with this probability."""
    download_truncate_rate: float = 0.0
    """An output download declares the full Content-Length but the connection closes after ~half."""
    download_403_rate: float = 0.0
    """Share of completed predictions whose output links have expired when first downloaded: that
    download and any later one of a link handed out before it answer 403 `{"message": "AccessDenied:
    Request has expired"}`; polls after it hand out fresh links that work."""
    seed: int | None = None
    """Seed of the emulator's random.Random (faults, jitter, failure codes); None = unseeded."""

    # --- uploads -------------------------------------------------------------------------------
    max_upload_bytes: int = 32 * 1024 * 1024
    """Uploads above this answer HTTP 413."""

    def __post_init__(self) -> None:
        _check_profile(self.profile)

    @property
    def realistic(self) -> bool:
        return self.profile == "realistic"

    def mesh_size(self) -> tuple[int, int]:
        """(grid, texture px) of the meshes made now."""
        if self.v3_sized:
            return max(self.mesh_grid, V3_GRID), max(self.mesh_texture_px, V3_TEXTURE_PX)
        return self.mesh_grid, self.mesh_texture_px

    @property
    def effective_discount_rate(self) -> float:
        if self.discount_rate is not None:
            return self.discount_rate
        return REALISTIC_DISCOUNT_RATE if self.realistic else 0.0

    def unlisted_status_rate_for(self, realistic: bool) -> float:
        """`unlisted_status_rate` for a prediction submitted under the realistic profile or not."""
        if self.unlisted_status_rate is not None:
            return self.unlisted_status_rate
        return REALISTIC_UNLISTED_STATUS_RATE if realistic else 0.0

    def public_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values, with the API key and webhook secret redacted."""
        data = dataclasses.asdict(self)
        data["api_key"] = data["webhook_secret"] = "***"
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def update(self, changes: dict[str, Any]) -> None:
        """Set fields from JSON-like values (lists become tuples, ints become floats where declared).
        Raises ValueError naming the first unknown field or ill-typed value; nothing changes then."""
        hints = typing.get_type_hints(EmulatorConfig)
        converted = {name: _coerce(name, hints.get(name), value) for name, value in changes.items()}
        if "profile" in converted:
            _check_profile(converted["profile"])
        for name, value in converted.items():
            setattr(self, name, value)


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"invalid value for profile: {profile!r} (one of {', '.join(PROFILES)})")


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if hint is None:
        raise ValueError(f"unknown config field: {name}")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        ok, result = _try_coerce(option, value)
        if ok:
            return result
    raise ValueError(f"invalid value for {name}: {value!r}")


def _try_coerce(option: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(option)
    if option is type(None):
        return value is None, None
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return is_number, float(value) if is_number else None
    if option is str:
        return isinstance(value, str), value
    if origin is tuple and isinstance(value, list | tuple):
        items = [_try_coerce(typing.get_args(option)[0], item) for item in value]
        return all(ok for ok, _ in items), tuple(item for _, item in items)
    if origin is dict and isinstance(value, dict):
        pairs = {k: _try_coerce(float, v) for k, v in value.items()}
        ok = all(isinstance(k, str) and good for k, (good, _) in pairs.items())
        return ok, {k: v for k, (_, v) in pairs.items()}
    return False, None
