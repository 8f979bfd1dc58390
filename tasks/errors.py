"""Every exception of the library (tasks/, flows/ and hy3d's Prefect set-up), in one module that
imports nothing but ``typing``: catching one costs no import of Prefect, httpx or numpy. The flows'
own errors, which carry a run summary, are in :mod:`flows.progress`; the CLI's ``UsageError`` is in
:mod:`hy3d.cli`.

The WaveSpeed client's tree. The split that matters is money: a submit is billed once the server
accepts it and there is no idempotency key, so callers must be able to tell "the server certainly
did not take this request" (safe to send again) from "the server may have taken it" (sending again
may bill twice).

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

Configuration errors: what the run was asked to do cannot work. Each is reported in one line before
anything is paid; a flow or the CLI catches the one base class.

    ConfigurationError (ValueError)      a flow parameter that cannot work (limit, block, price...)
    ├── MissingAPIKeyError               no WaveSpeed API key
    │   └── CredentialsBlockNotFoundError  no credentials block under the given name
    ├── InvalidSettingsError             a ``WAVESPEED_*`` setting that cannot work
    ├── UnknownModelError                a model id this tool does not drive
    ├── ManifestError                    the manifest as a whole cannot be used
    ├── OutputNotWritableError           the output URL cannot be written
    ├── DeliverablesUnavailableError     a format whose library or tool is not installed
    └── UnknownFormatError               a format name this tool does not make

The rest: one item's problem (the run goes on without it), a stopped submit, a deliverable that
could not be made, a webhook delivery refused, no Prefect API.

    ImageProblem (ValueError)            an image that cannot be sent (format, size)
    ImageChangedError (ValueError)       an image file changed between validation and upload
    UnsafePathError (ValueError)         a path component that could leave the output folder
    BudgetExceededError                  a submit that would pass the run's max_cost
    SubmitsStoppedError                  the run was stopped: this submit is not sent
    ClaimedElsewhereError                another live run holds this content
    WaitAbandonedError                   the run was interrupted while waiting (paid: resumable)
    GlbFormatError (ValueError)          not a GLB the deliverables can rewrite
    GltfpackError (RuntimeError)         gltfpack failed
    WebGlbError (RuntimeError)           the web GLB could not be made as asked
    PrintableError (RuntimeError)        the STL or OBJ could not be made
    UsdzError (RuntimeError)             the USDZ could not be made
    PreviewError (ValueError)            a mesh with nothing to draw, or too big to draw
    └── PreviewTooLargeError             over the preview size cap
    WebhookRejected                      a delivery not provably from WaveSpeed (401)
    └── WebhookBodyError                 signed, but not a prediction (400)
    PrefectUnavailableError              no Prefect API for the run (hy3d's set-up, one line)
"""

from __future__ import annotations

from typing import Any


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


class ConfigurationError(ValueError):
    """A run option, setting, credential, manifest, output, model or format that cannot work;
    reported in one line before anything is paid. Raised as is for a flow parameter that cannot
    work (a limit or block that cannot be set up, a price needed for max_cost)."""


class MissingAPIKeyError(ConfigurationError):
    """Configuration error: nothing can run without a key."""


class CredentialsBlockNotFoundError(MissingAPIKeyError):
    """Configuration error: no ``WaveSpeedCredentials`` block is saved under the given name.

    A :class:`MissingAPIKeyError` (and so a :class:`ValueError`): without the block there is no
    key, and callers that already report a missing key report this the same way.
    """

    def __init__(self, block_name: str, block_type_name: str) -> None:
        self.block_name = block_name
        self.block_type_name = block_type_name
        super().__init__(
            f"no {block_type_name!r} block named {block_name!r} on the "
            f"Prefect API: create it in the UI (Blocks) or with "
            f"WaveSpeedCredentials(api_key=...).save({block_name!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.block_name, self.block_type_name))


class InvalidSettingsError(ConfigurationError):
    """Configuration error: a ``WAVESPEED_*`` setting that cannot work; the message is one line."""


class UnknownModelError(ConfigurationError):
    """Configuration error: the model id is not a Hunyuan3D model this tool knows how to drive."""


class ManifestError(ConfigurationError):
    """The manifest as a whole cannot be used; the message says which manifest and why."""

    def __init__(self, message: str, source: str = "", row: int | None = None, field: str | None = None):
        super().__init__(message)
        self.source = source
        self.row = row
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.source, self.row, self.field))


class OutputNotWritableError(ConfigurationError):
    """Configuration error: the output URL cannot be written (bad URL, credentials, permissions)."""


class DeliverablesUnavailableError(ConfigurationError):
    """Configuration error: a format was asked for whose library or tool is not installed."""


class UnknownFormatError(ConfigurationError):
    """Configuration error: a format name this tool does not make."""


class ImageProblem(ValueError):
    """The file cannot be sent: the message says why, in words a user can act on."""


class ImageChangedError(ValueError):
    """The image file changed between validation and upload: what was checked is not what we'd pay for."""


class UnsafePathError(ValueError):
    """A path component that could point outside the output folder."""


class BudgetExceededError(Exception):
    """Submitting this item would take the run's spending over its ``max_cost``."""


class SubmitsStoppedError(Exception):
    """The run was stopped (rejected key, Ctrl-C, SIGTERM): this item's submit is not sent."""


class ClaimedElsewhereError(Exception):
    """Another live run holds this content: it will land it, this run leaves it alone."""


class WaitAbandonedError(Exception):
    """The run was interrupted while this prediction was being waited for. It is paid for and its
    id is in the ledger: a re-run resumes polling it, it does not submit again."""

    def __init__(self, prediction_id: str, reason: str) -> None:
        super().__init__(
            f"{reason} while waiting for prediction {prediction_id} (paid for: a re-run resumes it)"
        )
        self.prediction_id = prediction_id


class GlbFormatError(ValueError):
    """Not a GLB the deliverables can rewrite."""


class GltfpackError(RuntimeError):
    """gltfpack failed; the message carries the end of what it printed."""


class WebGlbError(RuntimeError):
    """The web GLB could not be made within what was asked (e.g. over max_faces)."""


class PrintableError(RuntimeError):
    """The STL or OBJ could not be made or does not read back."""


class UsdzError(RuntimeError):
    """The USDZ could not be made or does not read back."""


class PreviewError(ValueError):
    """The file holds nothing that can be drawn (no triangles), or is too big to draw."""


class PreviewTooLargeError(PreviewError):
    """The mesh is over :data:`flows.gallery.PREVIEW_MAX_BYTES`."""


class WebhookRejected(Exception):
    """A delivery that is not provably from WaveSpeed (answered 401)."""


class WebhookBodyError(WebhookRejected):
    """Signed, but not a prediction (answered 400: sending it again will not help)."""


class PrefectUnavailableError(Exception):
    """No Prefect API for the run: ``PREFECT_API_URL`` does not answer, or Prefect's temporary
    server or hy3d's local server (:mod:`hy3d.local_server`) cannot be started, reached or stopped.
    The message is one line that says what to do."""


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
