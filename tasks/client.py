"""Async client for the WaveSpeed v3 REST API (the contract: docs/wavespeed-api.md).

A plain client, no Prefect in here: the Prefect tasks are thin wrappers over it. Everything that
can go wrong surfaces as a :mod:`tasks.errors` exception, and only idempotent requests are retried
on transient failures; a submit is resent only when the server certainly did not accept it.

Sections, in order: settings (``WAVESPEED_*``), retries, connection lanes, the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks import __version__
from tasks.errors import (
    APIStatusError,
    APIUnreachableError,
    AuthenticationError,
    BadRequestError,
    DownloadError,
    IncompleteDownloadError,
    InvalidResponseError,
    InvalidSettingsError,
    MissingAPIKeyError,
    NoResponseError,
    NotFoundError,
    OutputRefusedError,
    PredictionTimeoutError,
    RateLimitError,
    RequestNotSentError,
    ServerError,
    SubmitOutcomeUnknownError,
    UploadRefusedError,
    WaveSpeedError,
    is_retry_safe,
    is_transient,
)
from tasks.models import Prediction
from tasks.polling import AccountQueue, DurationEstimator, PollSchedule
from tasks.storage import redact, register_secret

if TYPE_CHECKING:
    from tasks.webhooks import WebhookReceiver

# ==== Settings ====================================================================================
#
# Client settings, read from ``WAVESPEED_*`` environment variables (or a ``.env`` file).

DEFAULT_BASE_URL = "https://api.wavespeed.ai"


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


# ==== Retries =====================================================================================
#
# Retries with an explicit ``on=`` predicate, exponential backoff with jitter and ``Retry-After``.
#
# Modelled on stamina: nothing is retried unless the caller names what is retryable, a server's
# ``Retry-After`` wins over our own backoff, and ``set_testing(True)`` removes the waiting.

T = TypeVar("T")

retry_logger = logging.getLogger("hy3d.retry")

_testing = False


def set_testing(enabled: bool) -> None:
    """In tests, retry at once instead of sleeping (attempt counts stay the same)."""
    global _testing
    _testing = enabled


async def pause(seconds: float) -> None:
    """``asyncio.sleep``, except in tests (:func:`set_testing`), for loops of their own."""
    if not _testing:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_s: float = 1.0
    maximum_s: float = 30.0
    # Longest Retry-After we honour; beyond it we still wait but only this long.
    max_retry_after_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the given 1-based failed attempt."""
        ceiling = min(self.maximum_s, self.initial_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    on: Callable[[BaseException], bool],
    policy: RetryPolicy,
    what: str,
    deadline: float | None = None,
) -> T:
    """Run ``call`` until it succeeds, ``on(exc)`` is false, attempts run out or ``deadline``
    (a ``time.monotonic()`` value) would be passed by the next wait."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not on(exc) or attempt >= policy.attempts:
                raise
            delay = _retry_after(exc)
            delay = min(delay, policy.max_retry_after_s) if delay is not None else policy.backoff(attempt)
            # In testing nothing waits, so no wait can pass the deadline: judged on the delay, a
            # test failed whenever the random backoff happened to outlast its deadline.
            if deadline is not None and time.monotonic() + (0.0 if _testing else delay) > deadline:
                raise
            retry_logger.warning(
                "%s failed (%s); attempt %d/%d, retrying in %.1f s",
                what,
                exc,
                attempt,
                policy.attempts,
                delay,
            )
            if not _testing:
                await asyncio.sleep(delay)


# ==== Connection lanes ============================================================================
#
# Requests spread over several small connection pools ("lanes") instead of one big one.
#
# httpcore's pool looks at every one of its connections for every request it places, so its CPU
# cost per request grows with the number of connections; several small pools keep that cost near
# what one small pool costs (figures: docs/performance.md, "Connection lanes"). :class:`LanedTransport`
# opens a new lane only when every lane already carries :data:`LANE_CAPACITY` requests, so a small
# run uses a single pool.

LANE_CAPACITY = 16  # requests in flight per lane before another lane opens
MAX_LANES = 64


@dataclass
class _Lane:
    transport: httpx.AsyncBaseTransport
    load: int = 0  # requests sent and not yet finished (response body closed)


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its lane's place back when closed (streamed downloads hold
    their connection until then)."""

    def __init__(self, stream: httpx.AsyncByteStream, lane: _Lane) -> None:
        self._stream = stream
        self._lane: _Lane | None = lane

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._lane is not None:
                self._lane.load -= 1
                self._lane = None


class LanedTransport(httpx.AsyncBaseTransport):
    """Sends each request through the least loaded of up to ``max_lanes`` transports made by
    ``make_lane``. For one event loop (like an ``httpx.AsyncClient``)."""

    def __init__(
        self,
        make_lane: Callable[[], httpx.AsyncBaseTransport],
        *,
        capacity: int = LANE_CAPACITY,
        max_lanes: int = MAX_LANES,
    ) -> None:
        if capacity < 1 or max_lanes < 1:
            raise ValueError("capacity and max_lanes must be at least 1")
        self._make_lane = make_lane
        self._capacity = capacity
        self._max_lanes = max_lanes
        self._lanes: list[_Lane] = []

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @property
    def load(self) -> int:
        return sum(lane.load for lane in self._lanes)

    def _pick(self) -> _Lane:
        lane = min(self._lanes, key=lambda candidate: candidate.load, default=None)
        if lane is None or (lane.load >= self._capacity and len(self._lanes) < self._max_lanes):
            lane = _Lane(self._make_lane())
            self._lanes.append(lane)
        return lane

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._pick()
        lane.load += 1
        try:
            response = await lane.transport.handle_async_request(request)
        except BaseException:
            lane.load -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, lane),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            await lane.transport.aclose()


# ==== The client ==================================================================================

logger = logging.getLogger("hy3d.client")

UNKNOWN_CONTENT_TYPE = "application/octet-stream"
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
SUBMIT_KEEPALIVE_S = 1.0  # a submit reuses only a connection idle for less (see _http_clients)
ACCEPTED_AT_KEPT = 100_000  # acceptance times remembered for predictions not yet waited on

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# The run's first request, when it cannot connect, is tried again after these pauses, then the run
# stops: a wrong API root (or no route to it) must not cost minutes of retries per item.
FIRST_CONTACT_PAUSES_S = (0.5, 1.5)


def _why_not_sent(exc: BaseException, connect_timeout_s: float) -> str:
    """A few words on why a connection could not be made, from the exception chain (httpx wraps
    httpcore, which wraps the socket's error)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        if isinstance(error, socket.gaierror):
            return f"the host name does not resolve ({error.strerror}); behind a proxy? set HTTPS_PROXY"
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted ({error.verify_message})"
        if isinstance(error, ssl.SSLError):
            return f"the TLS handshake failed ({error.reason or error})"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
            return f"no connection within {connect_timeout_s:g} s"
        if isinstance(error, httpx.UnsupportedProtocol):
            return str(error)
    for error in chain:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
    root = chain[-1]
    return f"{type(root).__name__}: {root}"


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_for_status(status: int, message: str, retry_after: float | None) -> APIStatusError:
    cls: type[APIStatusError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    elif status in (400, 413, 422):
        cls = BadRequestError
    else:
        cls = APIStatusError
    return cls(status, message, retry_after=retry_after)


def _transfer_error(
    response: httpx.Response, refused: type[OutputRefusedError | UploadRefusedError]
) -> WaveSpeedError:
    """An upload or download answered with an error: 429 and 5xx are worth another try, like the
    API's; any other 4xx is that file's problem, never the API key's."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message = _message_of(body, response)
    if status == 429 or status >= 500:
        return _error_for_status(status, message, _parse_retry_after(response.headers.get("retry-after")))
    return refused(status, message)


def _message_of(body: Any, response: httpx.Response) -> str:
    # Errors come as the envelope {"code", "message"} or bare {"error": "..."}: read message, then error.
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return redact(value)
    text = redact(response.text.strip())
    return text[:300] if text else response.reason_phrase or "no message"


def decode_envelope(response: httpx.Response) -> dict[str, Any]:
    """Return ``data`` of a successful envelope, or raise the matching error."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not response.is_success:
        retry_after = _parse_retry_after(response.headers.get("retry-after"))
        raise _error_for_status(response.status_code, _message_of(body, response), retry_after)
    if not isinstance(body, dict):
        raise InvalidResponseError(f"HTTP {response.status_code} with a body that is not a JSON object")
    code = body.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
        # An error carried inside an HTTP 200 envelope (WaveSpeed's ComfyUI client checks for 401 there).
        raise _error_for_status(code, _message_of(body, response), None)
    data = body.get("data")
    if data is None and "id" in body and "status" in body:
        data = body  # a bare prediction, as webhook deliveries carry it
    if not isinstance(data, dict):
        raise InvalidResponseError(f"HTTP {response.status_code} envelope without a data object")
    return data


def _balance_of(data: Mapping[str, Any]) -> float:
    balance = data.get("balance")
    if not isinstance(balance, int | float):
        raise InvalidResponseError("balance answer without a numeric data.balance")
    return float(balance)


@dataclass(frozen=True)
class Price:
    """``POST /api/v3/model/price``: the list price and, when the account has one, its discount."""

    list_usd: float
    discounted_usd: float | None = None

    @property
    def billed_usd(self) -> float:
        """What a prediction is charged: the discounted price when WaveSpeed gives one."""
        return self.list_usd if self.discounted_usd is None else self.discounted_usd


def _with_overrides(
    settings: WaveSpeedSettings, api_key: str | SecretStr | None, base_url: str | None
) -> WaveSpeedSettings:
    """``settings`` with the key and API root given to the client instead, if any."""
    updates: dict[str, Any] = {}
    if api_key is not None:
        updates["api_key"] = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
    if base_url is not None:
        updates["base_url"] = base_url
    return settings.model_copy(update=updates) if updates else settings


class _HttpClients(NamedTuple):
    api: httpx.AsyncClient  # the API, with the key
    submits: httpx.AsyncClient  # the API for submits: stricter about reusing idle connections
    public: httpx.AsyncClient  # output downloads and presigned uploads: never the key


def _http_clients(
    settings: WaveSpeedSettings, key: SecretStr, transport: httpx.AsyncBaseTransport | None
) -> _HttpClients:
    """The client's HTTP clients, all sending through ``transport`` when one is given."""
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    client_headers = {"X-Client-Name": "prefect-hunyuan3d", "X-Client-Version": __version__}
    # Concurrency is bounded by the flow (and the account); httpx's default pool of 100 would
    # make items beyond it wait for a connection (PoolTimeout) at higher tiers.
    # Idle connections are dropped after 4 s, before servers commonly drop them (uvicorn 5 s,
    # load balancers 60 s): a request sent on a connection the server is closing at that
    # moment fails without an answer.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=4.0)
    # Submits are stricter: an unanswered submit cannot be retried (it may be billed). An
    # overloaded server runs its keep-alive timer late, after requests that arrived before it,
    # so a submit only reuses a connection idle for under a second.
    submit_limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=256, keepalive_expiry=SUBMIT_KEEPALIVE_S
    )

    # One TLS context for every pool (making one costs CPU), made on first use.
    shared_tls = functools.cache(httpx.create_ssl_context)

    def pools(lane_limits: httpx.Limits = limits) -> httpx.AsyncBaseTransport:
        # Several small pools: one big pool costs CPU per request in proportion to its
        # connections (see tasks.client).
        if transport is not None:
            return transport
        return LanedTransport(lambda: httpx.AsyncHTTPTransport(verify=shared_tls(), limits=lane_limits))

    def api_client(api_limits: httpx.Limits) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/"),
            headers={**client_headers, "Authorization": f"Bearer {key.get_secret_value()}"},
            timeout=timeout,
            limits=api_limits,  # for proxy transports from the environment; ours are the lanes
            transport=pools(api_limits),
            follow_redirects=False,
        )

    return _HttpClients(
        api=api_client(limits),
        submits=api_client(submit_limits),
        public=httpx.AsyncClient(
            headers=client_headers, timeout=timeout, limits=limits, transport=pools(), follow_redirects=True
        ),
    )


class WaveSpeedClient:
    """``async with WaveSpeedClient(settings) as client: ...``

    ``transport`` lets tests or callers inject any httpx transport (it is used for every request).
    Output downloads and presigned uploads go out without the Authorization header: they point at a
    CDN or storage service, which must never see the key.
    """

    def __init__(
        self,
        settings: WaveSpeedSettings | None = None,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        account_slots: int | None = None,
    ) -> None:
        """``account_slots``: how many predictions the account processes at once, when the caller
        keeps more than that submitted (queue headroom): the polls of queued predictions are then
        timed from when they should start (:mod:`tasks.polling`)."""
        self.settings = _with_overrides(settings or WaveSpeedSettings(), api_key, base_url)
        key = self.settings.require_api_key()
        register_secret(key.get_secret_value())
        if self.settings.webhook_secret is not None:
            register_secret(self.settings.webhook_secret.get_secret_value())
        self.base_url = self.settings.base_url.rstrip("/")
        self.retry_policy = RetryPolicy(
            attempts=self.settings.request_attempts,
            initial_s=self.settings.retry_initial_s,
            maximum_s=self.settings.retry_max_s,
        )
        clients = _http_clients(self.settings, key, transport)
        self._api, self._submits, self._public = clients.api, clients.submits, clients.public
        # Processing times seen, per model: they schedule the polls of later predictions.
        self.durations = DurationEstimator(floor=self.settings.poll_initial_interval_s)
        # When each prediction this client submitted was accepted (monotonic): its polls are
        # timed from then, not from when the caller gets round to waiting (ledger and cache
        # writes come in between, and take seconds when thousands of items are in flight).
        self._accepted_at: dict[str, float] = {}
        self.account_queue = AccountQueue(account_slots) if account_slots else None
        # Webhook mode (settings.webhook_url): started by ``async with`` / start_webhooks().
        self.webhooks: WebhookReceiver | None = None

    def __repr__(self) -> str:
        return f"WaveSpeedClient(base_url={self.base_url!r}, api_key=SecretStr('**********'))"

    async def __aenter__(self) -> WaveSpeedClient:
        if self.settings.webhook_url:
            await self.start_webhooks()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.webhooks is not None:
            await asyncio.to_thread(self.webhooks.stop)
            self.webhooks = None
        await self._api.aclose()
        await self._submits.aclose()
        await self._public.aclose()

    async def start_webhooks(self) -> None:
        """Receive finished predictions on ``webhook_listen`` and have later submits delivered to
        ``webhook_url``. When that cannot be set up, say why and go on polling."""
        s = self.settings
        if self.webhooks is not None or not s.webhook_url:
            return
        try:
            secret = s.webhook_secret or await self.get_webhook_secret()
            register_secret(secret.get_secret_value())
            from tasks.webhooks import WebhookReceiver  # uvicorn and its server: only in webhook mode

            receiver = WebhookReceiver(secret, s.webhook_listen, poll_grace_s=s.webhook_poll_grace_s)
            await asyncio.to_thread(receiver.start)
        except (WaveSpeedError, OSError, ValueError) as exc:
            logger.warning("webhook mode off, polling instead: %s", exc)
            return
        self.webhooks = receiver
        logger.info(
            "webhook mode: finished predictions are delivered to %s (listening on %s:%d)",
            s.webhook_url,
            receiver.host,
            receiver.port,
        )

    async def get_webhook_secret(self) -> SecretStr:
        """The account's webhook signing secret (``whsec_...``)."""
        data = await self._call_with_retries(
            lambda: self._api.build_request("GET", "/api/v3/webhook/secret"), "webhook secret"
        )
        secret = data.get("secret")
        if not isinstance(secret, str) or not secret:
            raise InvalidResponseError("webhook secret answer without a data.secret string")
        return SecretStr(secret)

    # -- transport ---------------------------------------------------------------------------

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        try:
            return await client.send(request)
        except _NOT_SENT as exc:
            raise RequestNotSentError(
                f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise NoResponseError(
                f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _call(self, request: httpx.Request, via: httpx.AsyncClient | None = None) -> dict[str, Any]:
        """Send ``request`` on ``via`` (default: the API client) and unwrap the envelope."""
        return decode_envelope(await self._send(via or self._api, request))

    async def _call_with_retries(
        self, build: Any, what: str, deadline: float | None = None
    ) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            return await self._call(build())

        return await retry_async(
            attempt, on=is_transient, policy=self.retry_policy, what=what, deadline=deadline
        )

    # -- predictions -------------------------------------------------------------------------

    async def submit(self, model: str, inputs: Mapping[str, Any]) -> Prediction:
        """Create a prediction (billed once accepted). Resent only on connect failure or 429.

        Raises :class:`SubmitOutcomeUnknownError` when the server may have accepted the request.
        """
        path = f"/api/v3/{model.strip('/')}"
        receiver = self.webhooks
        params = {"webhook": self.settings.webhook_url} if receiver is not None else None

        async def attempt() -> dict[str, Any]:
            return await self._call(
                self._submits.build_request("POST", path, json=dict(inputs), params=params), via=self._submits
            )

        sent_at = time.monotonic()
        try:
            data = await retry_async(
                attempt, on=is_retry_safe, policy=self.retry_policy, what=f"submit {model}"
            )
        except NoResponseError as exc:
            raise SubmitOutcomeUnknownError(str(exc)) from exc
        except ServerError as exc:
            raise SubmitOutcomeUnknownError(f"HTTP {exc.status_code}: {exc.message}") from exc
        except InvalidResponseError as exc:
            raise SubmitOutcomeUnknownError(f"unreadable answer to an accepted request: {exc}") from exc
        try:
            prediction = Prediction.model_validate(data)
        except ValueError as exc:
            raise SubmitOutcomeUnknownError(f"answer without a usable prediction: {exc}") from exc
        accepted_at = self._accepted_at[prediction.id] = time.monotonic()
        if receiver is not None:
            receiver.watch(prediction.id)
        if self.account_queue is not None:
            self.account_queue.accepted(prediction.id, accepted_at, prediction.created_ns, sent_at)
        while len(self._accepted_at) > ACCEPTED_AT_KEPT:  # ids never waited on here
            forgotten = next(iter(self._accepted_at))
            self._accepted_at.pop(forgotten)
            if receiver is not None:
                receiver.unwatch(forgotten)
            if self.account_queue is not None:
                self.account_queue.finished(forgotten, accepted_at)
        return prediction

    async def get_prediction(self, prediction_id: str, *, deadline: float | None = None) -> Prediction:
        """Fetch a prediction's current state, retrying transient failures."""
        path = f"/api/v3/predictions/{quote(prediction_id, safe='')}/result"
        data = await self._call_with_retries(
            lambda: self._api.build_request("GET", path), f"poll {prediction_id}", deadline
        )
        try:
            return Prediction.model_validate(data)
        except ValueError as exc:
            raise InvalidResponseError(f"prediction {prediction_id}: {exc}") from exc

    async def wait(
        self,
        prediction_id: str,
        *,
        timeout_s: float | None = None,
        model: str | None = None,
    ) -> Prediction:
        """Poll until the prediction is terminal or the deadline passes (see :mod:`tasks.polling`).

        A prediction this client submitted is polled on a schedule learned per ``model``, timed
        from the moment its submit was answered; any other (its age unknown, e.g. resumed from an
        earlier run) on a growing interval. In webhook mode a delivery ends the wait as soon as it
        arrives, and polls only catch lost deliveries (see :mod:`tasks.webhooks`).
        Returns the terminal prediction (completed *or* failed); raises
        :class:`PredictionTimeoutError` at the deadline. Unknown statuses mean "keep waiting".
        """
        s = self.settings
        started = time.monotonic()
        accepted_at = self._accepted_at.pop(prediction_id, None)
        deadline = started + (timeout_s if timeout_s is not None else s.wait_timeout_s)
        schedule = PollSchedule(
            self.durations,
            model if model and accepted_at is not None else None,
            accepted_at if accepted_at is not None else started,
            floor=s.poll_initial_interval_s,
            backoff=s.poll_backoff,
            ceiling=s.poll_max_interval_s,
            queue=self.account_queue if accepted_at is not None else None,
            prediction_id=prediction_id,
        )
        receiver = self.webhooks
        if receiver is not None and not receiver.watches(prediction_id):
            receiver = None  # not submitted with the webhook
        ended_at: float | None = None  # when it finished, as far as known (for the account queue)
        try:
            if receiver is None:
                prediction = await self._poll_until_terminal(prediction_id, schedule, started, deadline)
            else:
                prediction, ended_at = await self._delivery_or_poll(
                    receiver, prediction_id, schedule, started, deadline
                )
            if prediction.succeeded and prediction.execution_time_ms and (model or prediction.model):
                self.durations.add(model or prediction.model, prediction.execution_time_ms / 1000)
            return prediction
        finally:
            schedule.close()
            if self.account_queue is not None:  # terminal, or no longer followed here: a slot frees
                if ended_at is None:
                    ended_at = time.monotonic() - schedule.expected_lag_s()
                self.account_queue.finished(prediction_id, ended_at)

    async def _delivery_or_poll(
        self,
        receiver: WebhookReceiver,
        prediction_id: str,
        schedule: PollSchedule,
        started: float,
        deadline: float,
    ) -> tuple[Prediction, float]:
        """The delivered prediction or, failing that, the one the polls found; and about when it
        finished (monotonic): the delivery's arrival, or the poll less its usual and added delay."""
        put_off_s = 0.0

        def put_off() -> float:
            # The account queue's probe must go out early; other polls only catch lost deliveries.
            nonlocal put_off_s
            put_off_s = receiver.poll_grace_s if receiver.trusted and not schedule.probing else 0.0
            return put_off_s

        try:
            arrived = receiver.waiter(prediction_id)
            polling = asyncio.ensure_future(
                self._poll_until_terminal(prediction_id, schedule, started, deadline, put_off=put_off)
            )
            try:
                either: list[asyncio.Future[Any]] = [arrived, polling]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not polling.done():
                    polling.cancel()
                    await asyncio.wait({polling})
                arrived.cancel()
            delivery = receiver.take(prediction_id)
            if delivery is not None:
                return delivery
            prediction = polling.result()
            if receiver.trusted:
                receiver.missed()
            return prediction, time.monotonic() - schedule.expected_lag_s() - put_off_s
        finally:  # also when cancelled: nothing is kept for this prediction
            receiver.unwatch(prediction_id)

    async def _poll_until_terminal(
        self,
        prediction_id: str,
        schedule: PollSchedule,
        started: float,
        deadline: float,
        put_off: Callable[[], float] = lambda: 0.0,
    ) -> Prediction:
        status = "unknown"
        polls = 0
        while True:
            pause = await schedule.next_pause(polls, status, deadline)
            if pause is None:
                continue
            pause = max(pause, 0.0) + put_off()
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            try:
                prediction = await self.get_prediction(prediction_id, deadline=deadline)
            except (
                NoResponseError,
                RequestNotSentError,
                RateLimitError,
                ServerError,
                InvalidResponseError,
            ):
                if time.monotonic() >= deadline:
                    raise PredictionTimeoutError(prediction_id, time.monotonic() - started, status) from None
                raise
            polls += 1
            status = prediction.status
            schedule.observe(status)
            if prediction.is_terminal:
                return prediction
            if time.monotonic() >= deadline:
                raise PredictionTimeoutError(prediction_id, time.monotonic() - started, status)

    async def get_balance(self) -> float:
        """Account balance in USD. Also the cheapest authenticated call: the flow uses it to check
        the key once before fanning out, so a wrong key costs one request, not one per item."""
        data = await self._call_with_retries(
            lambda: self._api.build_request("GET", "/api/v3/balance"), "balance"
        )
        return _balance_of(data)

    async def get_price(self, model: str, inputs: Mapping[str, Any]) -> Price:
        """USD for one prediction of ``model`` with ``inputs`` (prices can depend on inputs)."""
        data = await self._call_with_retries(
            lambda: self._api.build_request(
                "POST", "/api/v3/model/price", json={"model_id": model, "inputs": dict(inputs)}
            ),
            f"price of {model}",
        )
        price = data.get("price")
        if not isinstance(price, int | float) or isinstance(price, bool):
            raise InvalidResponseError("price answer without a numeric data.price")
        discounted = data.get("discounted_price")
        if not isinstance(discounted, int | float) or isinstance(discounted, bool):
            discounted = None
        return Price(float(price), None if discounted is None else float(discounted))

    async def check_access(self) -> float | None:
        """The first request of a run. Raise :class:`AuthenticationError` when the key is rejected,
        :class:`APIUnreachableError` when no connection to the API root can be made (name
        resolution, refused, TLS) within a few seconds; otherwise the balance, or None when it
        could not be read for another reason such as a 5xx (the run goes on: items report their own
        errors)."""
        try:
            return _balance_of(await self._first_contact())
        except (AuthenticationError, APIUnreachableError):
            raise
        except WaveSpeedError as exc:
            logger.info("could not check the API key up front (%s); going on", exc)
            return None

    async def _first_contact(self) -> dict[str, Any]:
        """``GET /api/v3/balance``, a connection that cannot be made tried again only briefly (and
        without a warning per attempt: the caller reports one line); once the server is reached,
        transient failures get the ordinary retries."""

        def build() -> httpx.Request:
            return self._api.build_request("GET", "/api/v3/balance")

        for delay in (*FIRST_CONTACT_PAUSES_S, None):
            try:
                return await self._call(build())
            except RequestNotSentError as exc:
                if delay is None:
                    reason = _why_not_sent(exc, self.settings.connect_timeout_s)
                    raise APIUnreachableError(self.base_url, reason) from exc
                await pause(delay)
            except WaveSpeedError as exc:
                if isinstance(exc, AuthenticationError) or not is_transient(exc):
                    raise
                return await self._call_with_retries(build, "balance")
        raise AssertionError("the last attempt returns or raises")

    # -- media -------------------------------------------------------------------------------

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload a local image and return the URL to pass as a model input (uploads are not billed)."""
        if self.settings.upload_method == "presigned":
            return await self.upload_presigned(data, filename, content_type)
        return await self.upload_binary(data, filename, content_type)

    async def upload_binary(self, data: bytes, filename: str, content_type: str) -> str:
        def build() -> httpx.Request:
            return self._api.build_request(
                "POST",
                "/api/v3/media/upload/binary",
                files={"file": (filename, data, content_type)},
                timeout=self.settings.upload_timeout_s,
            )

        body = await self._call_with_retries(build, f"upload {filename}")
        return self._download_url(body)

    async def upload_presigned(self, data: bytes, filename: str, content_type: str) -> str:
        async def attempt() -> str:
            ticket: dict[str, Any] = {"filename": filename, "size": len(data)}
            if content_type and content_type != UNKNOWN_CONTENT_TYPE:
                ticket["content_type"] = content_type  # as the official SDK: only when it is known
            body = await self._call(self._api.build_request("POST", "/api/v3/media/uploads", json=ticket))
            upload = body.get("upload")
            if not isinstance(upload, dict) or not isinstance(upload.get("url"), str):
                raise InvalidResponseError("upload answer without upload.url")
            headers = upload.get("headers") or {}
            if not isinstance(headers, dict):
                raise InvalidResponseError("upload.headers is not an object")
            method = str(upload.get("method") or "PUT").upper()
            # Exactly the headers the server gave, and no Authorization: the URL is pre-signed, and a
            # signed header we add or change makes the storage refuse the PUT.
            request = self._public.build_request(
                method,
                upload["url"],
                content=data,
                headers={str(k): str(v) for k, v in headers.items()},
                timeout=self.settings.upload_timeout_s,
            )
            for name in self._public.headers:
                if name.lower().startswith("x-client-") and name not in headers:
                    del request.headers[name]
            response = await self._send(self._public, request)
            if not response.is_success:
                raise _transfer_error(response, UploadRefusedError)
            return self._download_url(body)

        return await retry_async(
            attempt, on=is_transient, policy=self.retry_policy, what=f"upload {filename}"
        )

    @staticmethod
    def _download_url(body: Mapping[str, Any]) -> str:
        url = body.get("download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidResponseError("upload answer without an http(s) download_url")
        return url

    # -- outputs -----------------------------------------------------------------------------

    @asynccontextmanager
    async def stream_output(self, url: str) -> AsyncIterator[httpx.Response]:
        """Open an output URL for streaming (``response.aiter_bytes()``); only http(s), no key sent."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"refusing to download an output that is not http(s): {url[:100]!r}")
        request = self._public.build_request("GET", url)
        try:
            response = await self._public.send(request, stream=True)
        except _NOT_SENT as exc:
            raise RequestNotSentError(f"GET {request.url.host}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise NoResponseError(f"GET {request.url.host}: {type(exc).__name__}: {exc}") from exc
        try:
            if not response.is_success:
                await response.aread()
                raise _transfer_error(response, OutputRefusedError)
            yield response
        finally:
            await response.aclose()

    async def download(self, url: str, path: str, *, max_bytes: int | None = None) -> DownloadedFile:
        """Stream an output URL into the file ``path``, hashing as it goes: a mesh is never held whole
        in memory. At most ``max_bytes`` (default: the ``max_output_bytes`` setting)."""
        cap = self.settings.max_output_bytes if max_bytes is None else max_bytes
        digest, size = hashlib.sha256(), 0
        async with self.stream_output(url) as response:
            content_type = response.headers.get("content-type")
            announced = response.headers.get("content-length")
            expected = int(announced) if announced and announced.isdigit() else None
            if expected is not None and expected > cap:
                raise DownloadError(f"output is {expected} bytes, over the {cap}-byte cap")
            try:
                with open(path, "wb") as handle:
                    async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                        size += len(chunk)
                        if size > cap:
                            raise DownloadError(f"output exceeds the {cap}-byte cap")
                        digest.update(chunk)
                        handle.write(chunk)
            except httpx.HTTPError as exc:
                raise IncompleteDownloadError(
                    f"download interrupted after {size} bytes: {type(exc).__name__}: {exc}"
                ) from exc
        if expected is not None and size != expected:
            raise IncompleteDownloadError(f"received {size} of {expected} announced bytes")
        return DownloadedFile(url, path, size, digest.hexdigest(), content_type)


@dataclass(frozen=True)
class DownloadedFile:
    """An output as :meth:`WaveSpeedClient.download` wrote it."""

    url: str
    path: str
    size: int
    sha256: str
    content_type: str | None = None


__all__ = ["DownloadedFile", "Price", "WaveSpeedClient", "WaveSpeedError", "decode_envelope"]
