"""Where a request comes from: the Host it names, the peer it came from, and whether it was forwarded.

Two rules live here. The trusted-host check refuses a Host header the operator did not allow (DNS rebinding:
a web page whose name resolves to 127.0.0.1 sends its own name as Host). The anonymous rule decides whether
a request may go without a key on a keyless loopback server: only from a loopback IP peer, naming a loopback
host, and carrying no forwarding header — a same-host proxy or tunnel connects from loopback too, and only
its headers tell that the caller is elsewhere.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_body
from service.security import is_loopback

# Headers a proxy adds to say whom it forwards for (RFC 7239, the de-facto X-Forwarded-For and nginx's).
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
# Probes and scrapers (load balancers, Kubernetes, Prometheus) send the address they dial as Host; these
# answers hold no personal data.
HOST_CHECK_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


def host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:8000` → `::1`, `Example.com.:80` → `example.com`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def is_loopback_ip(address: str | None) -> bool:
    """A real loopback IP address; a missing address (UNIX socket) or a name is not."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_forwarded(headers: dict[str, str]) -> bool:
    return any(name in headers for name in FORWARDING_HEADERS)


def anonymous_allowed(client_host: str | None, headers: dict[str, str]) -> bool:
    """May this request be served without a key (when the server is keyless and bound to loopback)?"""
    return (
        is_loopback_ip(client_host)
        and is_loopback(host_name(headers.get("host", "")))
        and not is_forwarded(headers)
    )


class HostPolicy:
    """Host header values a server answers: loopback names, its bind address, what the operator lists."""

    def __init__(self, bind_host: str, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.exact = {host_name(h) for h in allowed if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*.") and len(h) > 2)
        if bind_host and bind_host not in ("0.0.0.0", "::"):
            self.exact.add(host_name(bind_host))

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header:
            return False
        name = host_name(host_header)
        return is_loopback(name) or name in self.exact or name.endswith(self.suffixes)


class TrustedHostMiddleware:
    """400 `invalid_host` for a Host header the policy does not allow, before anything else runs."""

    def __init__(self, app: ASGIApp, *, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in HOST_CHECK_EXEMPT:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_body(
                "invalid_host",
                f"this server does not answer to Host {host!r}; add the name to FACEBANK_ALLOWED_HOSTS",
            ),
            status_code=400,
            headers={"connection": "close"},
        )
        await response(scope, receive, send)
