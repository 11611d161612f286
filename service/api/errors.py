"""Every error leaves as `{"error": {"code": ..., "message": ...}}` with a 4xx status for user input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.index.milvus import VectorStoreUnavailable
from service.pipeline.face_policy import FaceRefused

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"{what} not found")


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    411: "length_required",
    415: "unsupported_media_type",
}


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> str | None:
    """Every method some route serves at this path (Starlette's 405 names only the first route's).

    Asked through each route's public `matches`, since included routers do not list their methods.
    """
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(FaceRefused)
    async def _face_refused(_: Request, exc: FaceRefused) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=422)

    @app.exception_handler(VectorStoreUnavailable)
    async def _store_unavailable(_: Request, exc: VectorStoreUnavailable) -> JSONResponse:
        # The engine's message names its address, not credentials (the token is never in it).
        log.warning("vector store unavailable: %s", exc)
        return JSONResponse(
            error_body("vector_store_unavailable", f"the vector store cannot answer now, try again: {exc}"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("validation_error", _describe(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers["Allow"] = allowed
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", "internal server error"), status_code=500)
