"""Answer shapes of the API: the `{code, message, data}` envelope, errors, auth, injected faults."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from emulator.config import EmulatorConfig
from emulator.stats import EmulatorStats

REASONS: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
UNAUTHORIZED = "Unauthorized: invalid API key"
GATEWAY_STATUSES = frozenset({502, 504})


class ApiError(Exception):
    """Raised by handlers; answered as an envelope `{"code": status, "message": ..., "data": null}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def envelope(data: Any, status: int = 200, message: str = "success") -> JSONResponse:
    return JSONResponse({"code": status, "message": message, "data": data}, status_code=status)


def error_envelope(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": status, "message": message, "data": None}, status_code=status, headers=headers
    )


def require_auth(request: Request, config: EmulatorConfig, stats: EmulatorStats) -> None:
    """Accept only `Authorization: Bearer <config.api_key>`; the presented key is never echoed."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = config.api_key.encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), expected):
        stats.record_auth_failure()
        raise ApiError(401, UNAUTHORIZED)


def format_retry_after(seconds: float) -> str:
    """Integral values as integers ("2"); fractions kept ("0.5": not RFC 9110, but handy in tests)."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def too_many_requests(config: EmulatorConfig) -> ApiError:
    headers = {}
    if config.retry_after_s is not None:
        headers["Retry-After"] = format_retry_after(max(0.0, config.retry_after_s))
    return ApiError(429, "Too Many Requests: rate limit exceeded", headers)


def server_fault(status: int, config: EmulatorConfig) -> Response:
    """An injected 5xx: a gateway-style HTML page for 502/504 (when enabled), else an envelope."""
    reason = REASONS.get(status, "Server Error")
    if status in GATEWAY_STATUSES and config.gateway_5xx_html:
        title = f"{status} {reason}"
        page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        return HTMLResponse(page, status_code=status)
    return error_envelope(status, reason)


def s3_error(status: int, code: str, message: str) -> Response:
    """An S3-style XML error (the CDN and the presigned upload URL answer these)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, else ApiError 400."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Invalid request body: not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid request body: expected a JSON object")
    return body
