"""Request body limits, enforced before the body is read: a declared Content-Length over the limit is refused
at once (413), and a body streamed without one is cut off as soon as it passes the limit."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body

# JSON bodies (identities) are small: a name, an external id and at most 16 KiB of metadata.
JSON_BODY_LIMIT = 64 * 1024
# Multipart fields beside the images (identity_id) and the part headers.
MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit; the error handler turns it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


def body_limit(headers: dict[str, str], max_upload_bytes: int) -> int:
    """The most bytes a request may send: uploads carry up to two images (verify), anything else is JSON."""
    content_type = headers.get("content-type", "").lower()
    if content_type.startswith("multipart/"):
        return 2 * max_upload_bytes + MULTIPART_OVERHEAD
    return JSON_BODY_LIMIT


def keep_uploads_in_memory(max_upload_bytes: int) -> None:
    """Make Starlette keep every uploaded file part in memory, never in a temporary file.

    Why: it spools parts over 1 MiB to disk, where a photo (biometric data) would outlive the request in
    freed blocks beyond the reach of erasure. The body limit above already bounds what a request may hold.
    The setting is a class attribute, so it is process-wide; it only ever grows here.
    """
    needed = 2 * max_upload_bytes + MULTIPART_OVERHEAD
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, needed)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit = body_limit(headers, self.max_upload_bytes)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(scope, receive, send, 400, "bad_request", "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _refuse(
                    scope,
                    receive,
                    send,
                    413,
                    "payload_too_large",
                    f"request body of {int(declared)} bytes is larger than the limit of {limit} bytes",
                )
                return

        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    # Why close the connection: the unread body would otherwise be taken for the next request.
    response = JSONResponse(error_body(code, message), status_code=status, headers={"connection": "close"})
    await response(scope, receive, send)
