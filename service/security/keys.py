"""API keys: random tokens shown once, stored as SHA-256 hashes, each carrying scopes."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.security.audit import Actions, record
from service.security.principal import Principal, Scope
from service.storage import keys as key_repo
from service.storage.tables import ApiKey

TOKEN_PREFIX = "fbk_"
# 32 random bytes: 256 bits of entropy, 43 characters of URL-safe base64.
_TOKEN_BYTES = 32
_TOKEN_PATTERN = re.compile(r"^fbk_[A-Za-z0-9_-]{43}$")
# How much of the token a listing shows: the "fbk_" marker and 8 random characters (48 bits, not a secret).
SHOWN_PREFIX_LENGTH = len(TOKEN_PREFIX) + 8
_SCOPE_NAMES = frozenset(s.value for s in Scope)


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scope names (also comma-separated) → scopes; ValueError names the unknown ones, or says none given."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = sorted({name for name in names if name not in _SCOPE_NAMES})
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope)}")
    if not names:
        raise ValueError(f"give at least one scope: {', '.join(Scope)}")
    return frozenset(Scope(name) for name in names)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> str:
    # Why a plain SHA-256 and not bcrypt/argon2: slow hashes protect low-entropy passwords from guessing.
    # These tokens are 256 random bits, so no guess can succeed either way, and a fast deterministic hash
    # lets a request find its key through a unique index instead of trying every stored hash.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(token: str) -> bool:
    return bool(_TOKEN_PATTERN.match(token))


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created key and its token: the only moment the token exists outside the caller's hands."""

    key: ApiKey
    token: str


def issue_key(session: Session, *, name: str, scopes: Iterable[Scope], actor: Principal) -> IssuedKey:
    """Create a key (audited in the same transaction); the caller commits, then shows `token` once."""
    token = new_token()
    key = key_repo.create_key(
        session,
        name=name,
        prefix=token[:SHOWN_PREFIX_LENGTH],
        secret_sha256=token_hash(token),
        scopes=[Scope(s).value for s in scopes],
        created_by=actor.label,
    )
    record(
        session,
        actor,
        Actions.KEY_CREATE,
        "api_key",
        key.id,
        detail={"name": key.name, "scopes": key.scopes, "prefix": key.prefix},
    )
    return IssuedKey(key=key, token=token)


def revoke_key(session: Session, *, key_id: uuid.UUID, actor: Principal) -> ApiKey | None:
    """Revoke a key (audited); None when there is no such key. Revoking twice records nothing new."""
    key = key_repo.get_key(session, key_id=key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key_repo.revoke_key(session, key_id=key_id)
        record(session, actor, Actions.KEY_REVOKE, "api_key", key.id, detail={"prefix": key.prefix})
    return key


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal a token stands for, None when it is malformed, unknown or revoked."""
    if not looks_like_token(token):
        return None
    key = key_repo.find_active_key(session, secret_sha256=token_hash(token))
    if key is None:
        return None
    scopes = frozenset(Scope(s) for s in key.scopes if s in _SCOPE_NAMES)
    return Principal(label=f"key {key.prefix} ({key.name})", key_id=key.id, scopes=scopes)
