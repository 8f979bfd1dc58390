"""Uploads: binary multipart, and presigned PUT (realistic profile: `content_type` optional, the only
signed header `If-None-Match: *`)."""

from __future__ import annotations

import mimetypes
import re
import uuid
from pathlib import PurePosixPath
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from emulator.responses import ApiError, envelope, read_json_object, require_auth, s3_error
from emulator.routing import RouteGroup, route
from emulator.store import Blob, PendingUpload

_MULTIPART_SLACK = 64 * 1024
"""Content-Length above max_upload_bytes + this is refused before parsing the multipart body."""
PRECONDITION_FAILED = "At least one of the pre-conditions you specified did not hold"
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


def _extension(filename: str, content_type: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    if _SAFE_EXT.match(suffix):
        return suffix
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return guessed if _SAFE_EXT.match(guessed) else ""


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()


def _category(content_type: str) -> str:
    """The realistic profile's upload `type`: a category, not a MIME type."""
    major = _media_type(content_type).split("/")[0]
    return major if major in ("image", "video", "audio") else "file"


class MediaRoutes(RouteGroup):
    def _too_large(self, size: int) -> ApiError:
        limit = self.state.config.max_upload_bytes
        return ApiError(413, f"File too large: {size} bytes (limit {limit} bytes)")

    def _store_media(self, data: bytes, filename: str, content_type: str) -> str:
        key = f"{uuid.uuid4().hex}{_extension(filename, content_type)}"
        self.state.store.media[key] = Blob(data, content_type)
        return key

    # ---- POST /api/v3/media/upload/binary ----------------------------------------------------------
    @route("/api/v3/media/upload/binary", "POST")
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
                "type": _category(content_type) if state.config.realistic else content_type,
            }
        )

    # ---- POST /api/v3/media/uploads (presigned PUT, step 1) ----------------------------------------
    @route("/api/v3/media/uploads", "POST")
    async def create_upload(self, request: Request) -> Response:
        state = self.state
        realistic = state.config.realistic
        require_auth(request, state.config, state.stats)
        body = await read_json_object(request)
        for name in ("filename", "size") if realistic else ("filename", "size", "content_type"):
            if body.get(name) in (None, ""):
                raise ApiError(400, f"Missing required parameter: {name}")
        filename, size, given_type = body["filename"], body["size"], body.get("content_type")
        given_type = None if given_type == "" else given_type
        if not isinstance(filename, str):
            raise ApiError(400, "Invalid parameter 'filename': must be a string")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ApiError(400, "Invalid parameter 'size': must be a positive integer")
        if given_type is not None and not isinstance(given_type, str):
            raise ApiError(400, "Invalid parameter 'content_type': must be a string")
        if size > state.config.max_upload_bytes:
            raise self._too_large(size)
        content_type = given_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        headers = {"If-None-Match": "*"} if realistic else {"Content-Type": content_type}
        token = uuid.uuid4().hex
        key = f"{uuid.uuid4().hex}{_extension(filename, content_type)}"
        state.store.pending_uploads[token] = PendingUpload(key, size, content_type, headers)
        state.stats.record_upload("create", 0)
        base = str(request.base_url).rstrip("/")
        data: dict[str, Any] = {
            "upload": {
                "method": "PUT",
                "url": f"{base}/cdn/upload/{token}?X-Expires=3600&X-Signature={uuid.uuid4().hex}",
                "headers": dict(headers),
            },
            "download_url": f"{base}/cdn/media/{key}",
            "filename": filename,
            "size": size,
            "type": _category(content_type) if realistic else content_type,
        }
        return envelope(data)

    # ---- PUT /cdn/upload/{token} (presigned PUT, step 2; no auth, S3-like answers) -----------------
    @route("/cdn/upload/{token}", "PUT")
    async def put_upload(self, request: Request) -> Response:
        state = self.state
        if "authorization" in request.headers:
            state.stats.record_put_with_authorization()
            await request.body()
            return s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; the signature is in the query string, "
                "do not send an Authorization header",
            )
        pending = state.store.pending_uploads.get(request.path_params["token"])
        if pending is None:
            await request.body()
            return s3_error(404, "NoSuchUpload", "The upload URL is unknown or expired")
        limit = state.config.max_upload_bytes
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return s3_error(413, "EntityTooLarge", f"Your proposed upload exceeds {limit} bytes")
            chunks.append(chunk)
        mismatch = _unsigned_header(request, pending)
        if mismatch is not None:
            return s3_error(400, "SignatureDoesNotMatch", mismatch)
        if "If-None-Match" in pending.signed_headers and pending.key in state.store.media:
            return s3_error(412, "PreconditionFailed", PRECONDITION_FAILED)
        if received != pending.size:
            return s3_error(
                400, "BadDigest", f"Body is {received} bytes but the upload was signed for {pending.size}"
            )
        state.store.media[pending.key] = Blob(b"".join(chunks), pending.content_type)
        state.stats.record_upload("put", received)
        return Response(status_code=200, headers={"ETag": f'"{uuid.uuid4().hex}"'})


def _unsigned_header(request: Request, pending: PendingUpload) -> str | None:
    """Why the PUT does not carry the signed headers exactly, or None when it does."""
    for name, value in pending.signed_headers.items():
        sent = request.headers.get(name, "")
        if name.lower() == "content-type":
            if _media_type(sent) != _media_type(value):
                return f"Content-Type {_media_type(sent) or '(none)'} does not match the signed {value}"
        elif sent != value:
            return f"The signed header {name}: {value} is missing or different ({sent or '(none)'})"
    return None
