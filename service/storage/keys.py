"""Repository functions for API keys. Keyword-only; none of them commits (the caller owns the transaction)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.storage.tables import ApiKey, utcnow


def create_key(
    session: Session,
    *,
    name: str,
    prefix: str,
    secret_sha256: str,
    scopes: Sequence[str],
    created_by: str,
) -> ApiKey:
    """Store a new key by the hash of its secret; flushed, so `id` is set on return."""
    key = ApiKey(
        name=name,
        prefix=prefix,
        secret_sha256=secret_sha256,
        scopes=sorted(set(scopes)),
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return key


def find_active_key(session: Session, *, secret_sha256: str) -> ApiKey | None:
    """The key whose secret hashes to `secret_sha256`, unless it was revoked."""
    query = select(ApiKey).where(ApiKey.secret_sha256 == secret_sha256, ApiKey.revoked_at.is_(None))
    return session.scalars(query).one_or_none()


def get_key(session: Session, *, key_id: uuid.UUID) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def find_keys_by_prefix(session: Session, *, prefix: str) -> list[ApiKey]:
    """Keys whose shown prefix starts with `prefix` (a person revoking by what `keys list` printed)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = select(ApiKey).where(ApiKey.prefix.like(f"{escaped}%", escape="\\")).order_by(ApiKey.created_at)
    return list(session.scalars(query))


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    """Keys oldest first; revoked ones only when asked."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def has_active_keys(session: Session) -> bool:
    query = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)
    return session.execute(query).first() is not None


def revoke_key(session: Session, *, key_id: uuid.UUID) -> ApiKey | None:
    """Mark a key revoked (once; revoking again keeps the first time). None when no such key exists."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
