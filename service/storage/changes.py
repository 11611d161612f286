"""The change log: what changed the searchable gallery, in commit order, for every process to follow.

Writers do not append rows themselves. The repository functions that add or delete faces, delete identities
or switch the embedder call :func:`note`; the session factory (`storage.engine.make_session_factory`) writes
the noted changes in the same transaction, just before it commits (:func:`write_noted`). So a change is in
the log exactly when its write is committed, and no write path can forget it.

Order: positions must become visible in increasing order, or a follower could skip one that commits late.
On PostgreSQL the rows are written under a transaction-level advisory lock, taken last in the transaction
(so it cannot deadlock with row locks) and held until the commit; SQLite has a single writer anyway. A
NOTIFY on PostgreSQL wakes followers at once; they poll as well.

Keyword-only functions; only :func:`prune` and :func:`write_noted` write, neither commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.orm import Session

from service.storage import service_settings
from service.storage.tables import Change

FACE_ADDED: Final = "face.added"
FACE_REMOVED: Final = "face.removed"
IDENTITY_REMOVED: Final = "identity.removed"
EMBEDDER_SWITCHED: Final = "embedder.switched"
KINDS: Final = frozenset({FACE_ADDED, FACE_REMOVED, IDENTITY_REMOVED, EMBEDDER_SWITCHED})

# PostgreSQL: the channel followers LISTEN on, and the advisory lock that orders positions ("fbchange").
NOTIFY_CHANNEL: Final = "facebank_changes"
ORDER_LOCK_KEY: Final = int.from_bytes(b"fbchange", "big")

# service_settings key: every position up to this one has been pruned.
PRUNED_THROUGH: Final = "changes_pruned_through"

_NOTED = "facebank_noted_changes"


@dataclass(frozen=True, slots=True)
class Noted:
    kind: str
    model: str | None = None
    face_key: int | None = None
    identity_id: uuid.UUID | None = None


def note(
    session: Session,
    kind: str,
    *,
    model: str | None = None,
    face_key: int | None = None,
    identity_id: uuid.UUID | None = None,
) -> None:
    """Record a change of the caller's transaction; it is written to the log when the transaction commits."""
    session.info.setdefault(_NOTED, []).append(Noted(kind, model, face_key, identity_id))


def write_noted(session: Session) -> None:
    """Write the changes noted in this transaction (a `before_commit` hook; see module docstring)."""
    noted: list[Noted] = session.info.pop(_NOTED, [])
    if not noted:
        return
    connection = session.connection()
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ORDER_LOCK_KEY})
    session.add_all(
        Change(kind=n.kind, model=n.model, face_key=n.face_key, identity_id=n.identity_id) for n in noted
    )
    session.flush()
    if postgres:
        connection.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def forget_noted(session: Session) -> None:
    """Drop what a rolled-back transaction noted."""
    session.info.pop(_NOTED, None)


def head(session: Session) -> int:
    """The newest position (0 for an empty log)."""
    return int(session.scalar(select(func.max(Change.id))) or 0)


def pruned_through(session: Session) -> int:
    value = service_settings.get_value(session, key=PRUNED_THROUGH)
    return int(value) if value else 0


def after(session: Session, *, position: int, limit: int) -> Sequence[Change]:
    """Up to `limit` changes after `position`, oldest first."""
    query = select(Change).where(Change.id > position).order_by(Change.id).limit(limit)
    return session.scalars(query).all()


def prune(session: Session, *, before: datetime) -> int:
    """Delete the changes made before `before` (the newest one is always kept, so positions never restart);
    records how far the log is pruned. Returns the number deleted."""
    newest = head(session)
    doomed = select(func.max(Change.id)).where(Change.at < before, Change.id < newest)
    through = session.scalar(doomed)
    if not through:
        return 0
    result = session.execute(delete(Change).where(Change.id <= through))
    deleted = getattr(result, "rowcount", 0)
    if through > pruned_through(session):
        service_settings.put_value(session, key=PRUNED_THROUGH, value=str(through))
    return int(deleted or 0)


class Listener:
    """Waits for the NOTIFY that :func:`write_noted` sends (PostgreSQL), on a connection of its own that it
    reopens when it breaks. Call it with the longest wait in seconds; True when a notification came."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Any = None

    def __call__(self, timeout: float) -> bool:
        import psycopg

        try:
            if self._connection is None:
                url = self._engine.url.set(drivername="postgresql")
                self._connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
                self._connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return any(True for _ in self._connection.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error:
            self.close()
            return False

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


def listener_for(engine: Engine) -> Listener | None:
    """A :class:`Listener` on PostgreSQL; None on SQLite, whose followers poll."""
    return Listener(engine) if engine.dialect.name == "postgresql" else None
