"""Authentication (who is calling) and authorisation (may they do this).

`AuthMiddleware` works out the caller once per request, before any body is read, and refuses a request that
carries a body without valid credentials (401) so an anonymous client cannot make the server parse uploads.
Routes then ask for a scope through `Identify`, `Enroll` or `Admin`, which answer 401 or 403.

A server with no API keys in its database serves without authentication only when it was configured to listen
on a loopback address and the request passes `access.anonymous_allowed` (loopback peer and Host, nothing
forwarded); `facebank serve` refuses any other address then.

Two limits run here, before any key is looked up: a client address that sent too many wrong keys gets 429
until its budget refills, and a key over its request rate gets 429 (both with `Retry-After`). Key checks run
on threads of their own, so image work cannot hold up the check of the next caller's key.
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
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.access import anonymous_allowed
from service.api.errors import APIError, error_body
from service.api.state import AppState
from service.security import Principal, anonymous_loopback, authenticate
from service.security import Scope as KeyScope
from service.storage import keys as key_repo

_STATE_KEY = "facebank_auth"
# Threads for key checks, apart from the pool that routes (and their image work) run on.
AUTH_THREADS = 4
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
            anonymous = (
                state.open_without_keys
                and anonymous_allowed(client_host, headers)
                and not key_repo.has_active_keys(session)
            )
    except SQLAlchemyError:
        return AuthFailure(503, "unavailable", "the database cannot be reached to check the API key")
    if anonymous:
        return anonymous_loopback()
    return AuthFailure(401, "missing_api_key", f"this endpoint needs an API key; {_HOW}")


def _sends_key(headers: dict[str, str]) -> bool:
    return bool(headers.get("authorization", "").strip() or headers.get("x-api-key", "").strip())


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length", "").strip()
    return "transfer-encoding" in headers or (length.isdigit() and int(length) > 0)


class AuthMiddleware:
    """Resolve the caller of every /v1 request up front; refuse an unauthenticated body before reading it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._threads: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.facebank
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        client_host = client[0] if client else None
        # Why by address: a wrong key names nobody; behind a proxy, FACEBANK_TRUSTED_PROXIES makes this the
        # real client rather than the proxy.
        caller = client_host or "unknown"
        if _sends_key(headers) and (wait := state.failed_keys.blocked(caller)) is not None:
            failure = AuthFailure(429, "too_many_failed_attempts", "too many wrong API keys from here")
            await _refuse(scope, receive, send, failure, headers, retry_after=wait)
            return
        if self._threads is None:  # made here: an anyio limiter needs the running event loop
            self._threads = anyio.CapacityLimiter(AUTH_THREADS)
        result = await anyio.to_thread.run_sync(resolve, state, headers, client_host, limiter=self._threads)
        if isinstance(result, AuthFailure) and result.code == "invalid_api_key":
            state.failed_keys.take(caller)
        if (
            isinstance(result, Principal)
            and result.key_id is not None
            and (wait := state.key_requests.take(str(result.key_id))) is not None
        ):
            failure = AuthFailure(429, "rate_limited", "this API key is over its request rate")
            await _refuse(scope, receive, send, failure, headers, retry_after=wait)
            return
        scope.setdefault("state", {})[_STATE_KEY] = result
        # Answered here rather than by the route's dependency, which would first wait for a worker thread;
        # a path or method that no route serves is left to the app, so that it answers 404 or 405.
        if isinstance(result, AuthFailure) and (_has_body(headers) or _is_served(scope)):
            await _refuse(scope, receive, send, result, headers)
            return
        await self.app(scope, receive, send)


def _is_served(scope: Scope) -> bool:
    return any(route.matches(scope)[0] is Match.FULL for route in scope["app"].router.routes)


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    failure: AuthFailure,
    headers: dict[str, str],
    *,
    retry_after: int | None = None,
) -> None:
    error = failure.error()
    extra = dict(error.headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(retry_after)
    if _has_body(headers):  # the unread body would otherwise be taken for the next request
        extra["connection"] = "close"
    response = JSONResponse(error_body(error.code, error.message), status_code=error.status, headers=extra)
    await response(scope, receive, send)


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
