"""Who is calling: a key holder, the local operator on the command line, or an anonymous loopback caller."""

from __future__ import annotations

import getpass
import ipaddress
import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    """What a key may do. `admin` may do everything, including managing keys and reading the audit log."""

    ADMIN = "admin"
    ENROLL = "enroll"
    IDENTIFY = "identify"


@dataclass(frozen=True, slots=True)
class Principal:
    label: str
    key_id: uuid.UUID | None = None
    scopes: frozenset[Scope] = field(default_factory=frozenset)

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def everything() -> frozenset[Scope]:
    return frozenset(Scope)


def anonymous_loopback() -> Principal:
    """The caller of a server that has no keys and listens on loopback only."""
    return Principal(label="anonymous (loopback, no API keys)", scopes=everything())


def cli_principal() -> Principal:
    """The operator running `facebank` on the machine; they can read the database anyway."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        user = "unknown"
    return Principal(label=f"cli {user}", scopes=everything())


def is_loopback(host: str | None) -> bool:
    """True for `localhost` and loopback IP addresses; any other name or address (0.0.0.0, ::) is not."""
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
