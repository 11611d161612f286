"""Authentication (who is calling) and authorisation (may they do this).

`AuthMiddleware` works out the caller once per request, before any body is read, and refuses a request that
carries a body without valid credentials (401) so an anonymous client cannot make the server parse uploads.
Routes then ask for a scope through `Identify`, `Enroll` or `Admin`, which answer 401 or 403.

A server with no API keys in its database serves without authentication only when it was configured to listen
on a loopback address and the caller connects from one; `facebank serve` refuses any other address then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import APIError, error_body
from service.api.state import AppState
from service.security import Principal, anonymous_loopback, authenticate, is_loopback
from service.security import Scope as KeyScope
from service.security.principal import is_ip_address
from service.storage import keys as key_repo

_STATE_KEY = "facebank_auth"
_HOW = "send an API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`"

bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer fbk_...`")
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key: `X-API-Key: fbk_...`"
)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    status: int
    code: str
    message: str

    def error(self) -> APIError:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return APIError(self.status, self.code, self.message, headers=headers)


def _credentials(headers: dict[str, str]) -> tuple[str | None, AuthFailure | None]:
    """The token the request carries, or why the credentials are unusable."""
    header_key = headers.get("x-api-key", "").strip() or None
    bearer: str | None = None
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            if header_key is None:
                return None, AuthFailure(401, "invalid_api_key", f"unsupported Authorization header; {_HOW}")
        else:
            bearer = value.strip()
    if bearer and header_key and bearer != header_key:
        return None, AuthFailure(401, "invalid_api_key", "Authorization and X-API-Key carry different keys")
    return bearer or header_key, None


def resolve(state: AppState, headers: dict[str, str], client_host: str | None) -> Principal | AuthFailure:
    """Who is calling: a key's principal, the anonymous loopback caller, or why neither. Blocking (SQL)."""
    token, failure = _credentials(headers)
    if failure is not None:
        return failure
    try:
        with state.sessions() as session:
            if token is not None:
                principal = authenticate(session, token)
                if principal is None:
                    return AuthFailure(401, "invalid_api_key", "the API key is unknown, malformed or revoked")
                return principal
            anonymous_allowed = (
                state.open_without_keys
                and (client_host is None or not is_ip_address(client_host) or is_loopback(client_host))
                and not key_repo.has_active_keys(session)
            )
    except SQLAlchemyError:
        return AuthFailure(503, "unavailable", "the database cannot be reached to check the API key")
    if anonymous_allowed:
        return anonymous_loopback()
    return AuthFailure(401, "missing_api_key", f"this endpoint needs an API key; {_HOW}")


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length", "").strip()
    return "transfer-encoding" in headers or (length.isdigit() and int(length) > 0)


class AuthMiddleware:
    """Resolve the caller of every /v1 request up front; refuse an unauthenticated body before reading it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.facebank
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        result = await anyio.to_thread.run_sync(resolve, state, headers, client[0] if client else None)
        scope.setdefault("state", {})[_STATE_KEY] = result
        if isinstance(result, AuthFailure) and _has_body(headers):
            error = result.error()
            response = JSONResponse(
                error_body(error.code, error.message),
                status_code=error.status,
                headers={**(error.headers or {}), "connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _caller(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    _header: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    # The two security schemes are parameters only so that the OpenAPI document describes them.
    result = getattr(request.state, _STATE_KEY, None)
    if result is None:  # the middleware did not run (an app assembled without it)
        client = request.client.host if request.client else None
        result = resolve(request.app.state.facebank, dict(request.headers), client)
    if isinstance(result, AuthFailure):
        raise result.error()
    return result


def require(scope: KeyScope) -> Callable[[Principal], Principal]:
    """A dependency returning the caller if they hold `scope` (or admin): 401 with no key, 403 without it."""

    def check(caller: Annotated[Principal, Depends(_caller)]) -> Principal:
        if not caller.allows(scope):
            raise APIError(
                403, "insufficient_scope", f"this API key lacks the {scope.value!r} scope (or 'admin')"
            )
        return caller

    check.__name__ = f"require_{scope.value}"
    return check


Identify = Annotated[Principal, Depends(require(KeyScope.IDENTIFY))]
Enroll = Annotated[Principal, Depends(require(KeyScope.ENROLL))]
Admin = Annotated[Principal, Depends(require(KeyScope.ADMIN))]
