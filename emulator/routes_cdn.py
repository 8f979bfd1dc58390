"""The unauthenticated CDN: uploaded media (`/cdn/media/{key}`), outputs (`/cdn/output/{name}`, and the
realistic profile's signed `/cdn/o/{name}?X-Amz-...`), with the download faults (truncation, expiry)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from emulator.links import link_expired
from emulator.responses import s3_error
from emulator.routing import RouteGroup, route
from emulator.signing import SIGNED_PREFIX, Verdict

EXPIRED_MESSAGE = "AccessDenied: Request has expired"
SIGNATURE_MISMATCH = "The request signature we calculated does not match the signature you provided."


class DeliberateTruncation(Exception):
    """Raised after sending part of a download so that the server drops the connection."""


class TruncatedResponse(Response):
    """Declares the full Content-Length, sends about half of the body, then aborts the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        raise DeliberateTruncation("download truncated on purpose (download_truncate_rate)")


def _expired() -> Response:
    return JSONResponse({"message": EXPIRED_MESSAGE}, status_code=403)


def _no_such_key() -> Response:
    return s3_error(404, "NoSuchKey", "The specified key does not exist.")


class CdnRoutes(RouteGroup):
    @route("/cdn/media/{key}", "GET", "HEAD")
    async def get_media(self, request: Request) -> Response:
        blob = self.state.store.media_blob(request.path_params["key"], self.state.config.retention_s)
        if blob is None:
            return _no_such_key()
        return Response(blob.data, media_type=blob.content_type)

    @route("/cdn/output/{name}", "GET", "HEAD")
    async def get_output(self, request: Request) -> Response:
        return self._serve_output(request, request.path_params["name"])

    @route(SIGNED_PREFIX + "{name}", "GET", "HEAD")
    async def get_signed_output(self, request: Request) -> Response:
        name = request.path_params["name"]
        verdict = self.state.signer.check(name, request.query_params)
        if verdict is Verdict.DENIED:
            return s3_error(403, "AccessDenied", SIGNATURE_MISMATCH)
        if verdict is Verdict.EXPIRED:
            return _expired()
        return self._serve_output(request, name)

    def _serve_output(self, request: Request, name: str) -> Response:
        state = self.state
        blob = state.store.output_blob(name, state.config.retention_s)
        if blob is None:
            return _no_such_key()
        if link_expired(state, name, blob):
            return _expired()
        if request.method == "HEAD":
            return Response(blob.data, media_type=blob.content_type)
        truncate = state.chance(state.config.download_truncate_rate)
        state.stats.record_download(name, truncate)
        if truncate:
            state.stats.record_fault("download_truncated")
            return TruncatedResponse(blob.data, media_type=blob.content_type)
        return Response(blob.data, media_type=blob.content_type)
