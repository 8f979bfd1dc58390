"""One exception tree for everything that can go wrong talking to WaveSpeed.

The split that matters is money: a submit is billed once the server accepts it and there is no
idempotency key, so callers must be able to tell "the server certainly did not take this request"
(safe to send again) from "the server may have taken it" (sending again may bill twice).

    WaveSpeedError
    ├── RequestNotSentError          never reached the server (connect refused/timeout): retry-safe
    ├── APIUnreachableError          the run's first request found no server at the API root: stop
    ├── NoResponseError              sent, but no answer arrived (read timeout, dropped connection)
    ├── APIStatusError               the server answered with an error status
    │   ├── BadRequestError          400/413/422: permanent for this input, not billed
    │   ├── AuthenticationError      401/403: stop the whole run, never retry
    │   ├── NotFoundError            404: unknown or expired (7-day retention) prediction or model
    │   ├── RateLimitError           429: refused, retry-safe, honours Retry-After
    │   └── ServerError              5xx
    ├── InvalidResponseError         an answer that is not the documented envelope
    ├── SubmitOutcomeUnknownError    a submit that may have been accepted (and billed)
    ├── PredictionTimeoutError       the wait deadline passed before a terminal status
    ├── UploadRefusedError           the storage behind a presigned upload URL refused the PUT
    └── DownloadError                an output could not be fetched or failed verification
        ├── OutputRefusedError       the CDN answered 401/403/404/410 (expired signed URL...)
        ├── IncompleteDownloadError  fewer bytes than announced, or a corrupt mesh: retry-safe
        └── MeshConversionError      a mesh in another format that could not be made a GLB

Only the API's own answers are APIStatusErrors: an upload or download goes to another host (a
storage service, a CDN), and its 403 says nothing about the API key; it is that item's problem.
"""

from __future__ import annotations


class WaveSpeedError(Exception):
    """Base of every error raised by this package's WaveSpeed client."""


class RequestNotSentError(WaveSpeedError):
    """The request never reached the server, so it cannot have been accepted or billed."""


class APIUnreachableError(WaveSpeedError):
    """Configuration error: the first request of a run could not connect to the API root at all (name
    resolution, connection refused, TLS), even after a few seconds: nothing else will get through."""

    def __init__(self, base_url: str, reason: str) -> None:
        self.base_url = base_url
        self.reason = reason
        super().__init__(f"cannot reach the WaveSpeed API at {base_url}: {reason}")


class NoResponseError(WaveSpeedError):
    """The request was (at least partly) sent but no answer arrived; the server may have acted on it."""


class APIStatusError(WaveSpeedError):
    """The server answered with an error status."""

    def __init__(self, status_code: int, message: str, *, retry_after: float | None = None) -> None:
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"WaveSpeed answered HTTP {status_code}: {message}")


class BadRequestError(APIStatusError):
    """400/413/422: the input is wrong; sending it again will not help."""


class AuthenticationError(APIStatusError):
    """401/403: the API key is missing, wrong, not activated, or the account is blocked."""

    def __init__(self, status_code: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status_code, message, retry_after=retry_after)
        hint = (
            "check WAVESPEED_API_KEY (or the credentials block)"
            if status_code == 401
            else "the account is not allowed to do this (check its status and balance)"
        )
        self.args = (f"WaveSpeed rejected the API key (HTTP {status_code}: {message}); {hint}",)


class NotFoundError(APIStatusError):
    """404: the prediction or model does not exist, or its result was deleted after 7 days."""


class RateLimitError(APIStatusError):
    """429: the server refused the request; it was not accepted, so it is safe to send again."""


class ServerError(APIStatusError):
    """5xx from the server or a gateway in front of it."""


class InvalidResponseError(WaveSpeedError):
    """The server answered 2xx with something that is not the documented JSON envelope."""


class SubmitOutcomeUnknownError(WaveSpeedError):
    """A submit may or may not have been accepted (and billed): do not send it again blindly."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"submit outcome unknown, the prediction may exist and be billed: {reason}")


class PredictionTimeoutError(WaveSpeedError):
    """The prediction did not reach a terminal status before the wait deadline."""

    def __init__(self, prediction_id: str, waited_s: float, last_status: str) -> None:
        self.prediction_id = prediction_id
        self.waited_s = waited_s
        self.last_status = last_status
        super().__init__(
            f"prediction {prediction_id} still {last_status!r} after {waited_s:.0f} s; "
            "it is not lost: a re-run resumes waiting for it"
        )


class DownloadError(WaveSpeedError):
    """An output could not be downloaded or is not acceptable (scheme, size cap)."""


class OutputRefusedError(DownloadError):
    """The CDN refused an output URL (401/403/404/410): typically a signed URL that expired. A new
    poll of the prediction may give fresh URLs."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(f"output download refused (HTTP {status_code}: {message})")


class UploadRefusedError(WaveSpeedError):
    """The storage behind a presigned upload URL refused the PUT with a 4xx (not the API key)."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        super().__init__(f"image upload refused by the storage (HTTP {status_code}: {message})")


class IncompleteDownloadError(DownloadError):
    """The download ended short of its announced length, or the file is not a valid mesh."""


class MeshConversionError(DownloadError):
    """The mesh came in another format (OBJ, zip...) and could not be turned into a GLB."""


def is_retry_safe(exc: BaseException) -> bool:
    """True when the server certainly did not accept the request: the only case a submit may be resent."""
    return isinstance(exc, RequestNotSentError | RateLimitError)


def is_transient(exc: BaseException) -> bool:
    """True for failures of an idempotent request (poll, upload, download) worth trying again."""
    return isinstance(
        exc,
        RequestNotSentError
        | NoResponseError
        | RateLimitError
        | ServerError
        | InvalidResponseError
        | IncompleteDownloadError,
    )
