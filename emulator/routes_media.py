"""Uploads (binary multipart and presigned PUT) and the unauthenticated CDN (media and outputs)."""

from __future__ import annotations

import mimetypes
import re
import uuid
from pathlib import PurePosixPath
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from emulator.responses import ApiError, envelope, read_json_object, require_auth
from emulator.state import EmulatorState
from emulator.store import Blob, PendingUpload

_MULTIPART_SLACK = 64 * 1024
"""Content-Length above max_upload_bytes + this is refused before parsing the multipart body."""
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


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


def _extension(filename: str, content_type: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    if _SAFE_EXT.match(suffix):
        return suffix
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return guessed if _SAFE_EXT.match(guessed) else ""


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()


class MediaRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/api/v3/media/upload/binary", self.upload_binary, methods=["POST"]),
            Route("/api/v3/media/uploads", self.create_upload, methods=["POST"]),
            Route("/cdn/upload/{token}", self.put_upload, methods=["PUT"]),
            Route("/cdn/media/{key}", self.get_media, methods=["GET", "HEAD"]),
            Route("/cdn/output/{name}", self.get_output, methods=["GET", "HEAD"]),
        ]

    def _too_large(self, size: int) -> ApiError:
        limit = self.state.config.max_upload_bytes
        return ApiError(413, f"File too large: {size} bytes (limit {limit} bytes)")

    def _store_media(self, data: bytes, filename: str, content_type: str) -> str:
        key = f"{uuid.uuid4().hex}{_extension(filename, content_type)}"
        self.state.store.media[key] = Blob(data, content_type)
        return key

    # ---- POST /api/v3/media/upload/binary ----------------------------------------------------------
    async def upload_binary(self, request: Request) -> Response:
        state = self.state
        require_auth(request, state.config, state.stats)
        declared = int(request.headers.get("content-length") or 0)
        if declared > state.config.max_upload_bytes + _MULTIPART_SLACK:
            raise self._too_large(declared)
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as exc:
            raise ApiError(400, "Invalid multipart body") from exc
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "Missing required parameter: file")
            data = await upload.read()
            filename = upload.filename or "upload"
            content_type = (
                upload.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
            )
        finally:
            await form.close()
        if len(data) > state.config.max_upload_bytes:
            raise self._too_large(len(data))
        key = self._store_media(data, filename, content_type)
        state.stats.record_upload("binary", len(data))
        base = str(request.base_url).rstrip("/")
        return envelope(
            {
                "download_url": f"{base}/cdn/media/{key}",
                "filename": filename,
                "size": len(data),
                "type": content_type,
            }
        )

    # ---- POST /api/v3/media/uploads (presigned PUT, step 1) ----------------------------------------
    async def create_upload(self, request: Request) -> Response:
        state = self.state
        require_auth(request, state.config, state.stats)
        body = await read_json_object(request)
        for name in ("filename", "size", "content_type"):
            if body.get(name) in (None, ""):
                raise ApiError(400, f"Missing required parameter: {name}")
        filename, size, content_type = body["filename"], body["size"], body["content_type"]
        if not isinstance(filename, str):
            raise ApiError(400, "Invalid parameter 'filename': must be a string")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ApiError(400, "Invalid parameter 'size': must be a positive integer")
        if not isinstance(content_type, str):
            raise ApiError(400, "Invalid parameter 'content_type': must be a string")
        if size > state.config.max_upload_bytes:
            raise self._too_large(size)
        token = uuid.uuid4().hex
        key = f"{uuid.uuid4().hex}{_extension(filename, content_type)}"
        state.store.pending_uploads[token] = PendingUpload(key, size, content_type)
        state.stats.record_upload("create", 0)
        base = str(request.base_url).rstrip("/")
        data: dict[str, Any] = {
            "upload": {
                "method": "PUT",
                "url": f"{base}/cdn/upload/{token}?X-Expires=3600&X-Signature={uuid.uuid4().hex}",
                "headers": {"Content-Type": content_type},
            },
            "download_url": f"{base}/cdn/media/{key}",
            "filename": filename,
            "size": size,
            "type": content_type,
        }
        return envelope(data)

    # ---- PUT /cdn/upload/{token} (presigned PUT, step 2; no auth, S3-like answers) -----------------
    async def put_upload(self, request: Request) -> Response:
        state = self.state
        if "authorization" in request.headers:
            state.stats.record_put_with_authorization()
            await request.body()
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; the signature is in the query string, "
                "do not send an Authorization header",
            )
        pending = state.store.pending_uploads.get(request.path_params["token"])
        if pending is None:
            await request.body()
            return _s3_error(404, "NoSuchUpload", "The upload URL is unknown or expired")
        limit = state.config.max_upload_bytes
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return _s3_error(413, "EntityTooLarge", f"Your proposed upload exceeds {limit} bytes")
            chunks.append(chunk)
        sent_type = _media_type(request.headers.get("content-type", ""))
        if sent_type != _media_type(pending.content_type):
            return _s3_error(
                400,
                "SignatureDoesNotMatch",
                f"Content-Type {sent_type or '(none)'} does not match the signed {pending.content_type}",
            )
        if received != pending.size:
            return _s3_error(
                400, "BadDigest", f"Body is {received} bytes but the upload was signed for {pending.size}"
            )
        state.store.media[pending.key] = Blob(b"".join(chunks), pending.content_type)
        state.stats.record_upload("put", received)
        return Response(status_code=200, headers={"ETag": f'"{uuid.uuid4().hex}"'})

    # ---- GET /cdn/media/{key}, GET /cdn/output/{name} -----------------------------------------------
    async def get_media(self, request: Request) -> Response:
        blob = self.state.store.media_blob(request.path_params["key"], self.state.config.retention_s)
        if blob is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return Response(blob.data, media_type=blob.content_type)

    async def get_output(self, request: Request) -> Response:
        state = self.state
        name = request.path_params["name"]
        blob = state.store.output_blob(name, state.config.retention_s)
        if blob is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if request.method == "HEAD":
            return Response(blob.data, media_type=blob.content_type)
        truncate = state.chance(state.config.download_truncate_rate)
        state.stats.record_download(name, truncate)
        if truncate:
            state.stats.record_fault("download_truncated")
            return TruncatedResponse(blob.data, media_type=blob.content_type)
        return Response(blob.data, media_type=blob.content_type)
