"""Service-wide settings in SQL (`service_settings`): the active embedder's `name@version`.

Keyword-only; none of them commits. Several app processes share the database, so a value is written with an
atomic insert-or-update (PostgreSQL and SQLite both have `ON CONFLICT`), never read-then-write.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.storage.tables import ServiceSetting, utcnow

ACTIVE_EMBEDDER = "active_embedder"


def get_value(session: Session, *, key: str, lock: bool = False) -> str | None:
    """With `lock`, a share lock until the caller's commit (PostgreSQL): a writer of `key` waits for it."""
    query = select(ServiceSetting.value).where(ServiceSetting.key == key)
    return session.scalar(query.with_for_update(read=True) if lock else query)


def put_value(session: Session, *, key: str, value: str) -> str | None:
    """Set `key` to `value`; returns the value it had before (None if it had none)."""
    previous = session.scalar(select(ServiceSetting.value).where(ServiceSetting.key == key).with_for_update())
    statement = _insert(session).values(key=key, value=value, updated_at=utcnow())
    statement = statement.on_conflict_do_update(
        index_elements=[ServiceSetting.key], set_={"value": value, "updated_at": utcnow()}
    )
    session.execute(statement)
    session.flush()
    return previous


def put_value_if_absent(session: Session, *, key: str, value: str) -> str:
    """Set `key` to `value` unless it has a value already; returns the value it has now.

    Why atomic: two processes starting together on a fresh database must end with one value, not a
    primary-key error in one of them.
    """
    statement = _insert(session).values(key=key, value=value, updated_at=utcnow())
    session.execute(statement.on_conflict_do_nothing(index_elements=[ServiceSetting.key]))
    stored = get_value(session, key=key)
    assert stored is not None
    return stored


def active_embedder(session: Session, *, lock: bool = False) -> str | None:
    """The active embedder's `name@version`, or None while no process has recorded one; `lock` holds off
    `facebank models use` until the caller commits what it stored under that model."""
    return get_value(session, key=ACTIVE_EMBEDDER, lock=lock)


def switched_away_from(session: Session, tag: str, *, lock: bool = False) -> str | None:
    """The active embedder when it is no longer `tag` (after `facebank models use`); None while `tag` is
    still the one, or no choice is recorded yet. `lock` as in :func:`active_embedder`."""
    active = active_embedder(session, lock=lock)
    return None if active in (None, tag) else active


def set_active_embedder(session: Session, *, tag: str) -> str | None:
    """Make `tag` the active embedder; returns the one it replaces (None if none was recorded)."""
    from service.storage import changes  # Why here: the change log keeps its own marker in this table

    previous = put_value(session, key=ACTIVE_EMBEDDER, value=tag)
    if previous != tag:
        changes.note(session, changes.EMBEDDER_SWITCHED, model=tag)
    return previous


def seed_active_embedder(session: Session, *, tag: str) -> str:
    """Record `tag` as the active embedder if none is recorded; returns the one that is active now."""
    return put_value_if_absent(session, key=ACTIVE_EMBEDDER, value=tag)


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(ServiceSetting)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(ServiceSetting)
    raise NotImplementedError(f"service settings need PostgreSQL or SQLite, not {dialect}")
