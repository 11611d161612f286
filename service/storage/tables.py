"""ORM tables: identities and their faces. SQL is the source of truth; the FAISS index is rebuilt from it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Why: explicit constraint names make migrations reproducible and let later ALTERs name what they drop.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Why: BIGINT on PostgreSQL, but on SQLite only "INTEGER PRIMARY KEY" aliases the rowid and autoincrements.
FACE_KEY_TYPE = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zone type and hands back naive values, so values are stored as UTC and tagged
    with UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; storage only accepts timezone-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Identity(Base):
    __tablename__ = "identities"
    # Why: keyset pagination walks (created_at, id).
    __table_args__ = (Index("ix_identities_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(256))
    external_id: Mapped[str | None] = mapped_column(String(256), unique=True)
    # Why: `metadata` is reserved on declarative classes, so the attribute carries a trailing underscore.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Why passive_deletes: the database cascades, so deleting an identity never loads its faces.
    faces: Mapped[list[Face]] = relationship(
        back_populates="identity", cascade="all, delete-orphan", passive_deletes=True, order_by="Face.key"
    )

    def __repr__(self) -> str:
        return f"Identity(id={self.id!s}, name={self.name!r}, external_id={self.external_id!r})"


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = (
        # Why: the batch ingester skips an image already enrolled for the same identity and model.
        Index("ix_faces_identity_id_image_sha256_model", "identity_id", "image_sha256", "model"),
        # Why: on SQLite, AUTOINCREMENT stops a deleted highest key being handed out again, which would
        # alias a stale FAISS entry; PostgreSQL sequences never reuse values anyway.
        {"sqlite_autoincrement": True},
    )

    # The stable integer id of this face in the FAISS index.
    key: Mapped[int] = mapped_column(FACE_KEY_TYPE, primary_key=True, autoincrement=True)
    # The public id.
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    identity_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identities.id", ondelete="CASCADE"), index=True
    )
    # float32 little-endian bytes; see repository.to_bytes / from_bytes.
    embedding: Mapped[bytes] = mapped_column(LargeBinary())
    dim: Mapped[int] = mapped_column(Integer())
    model: Mapped[str] = mapped_column(String(128), index=True)
    bbox: Mapped[list[float]] = mapped_column(JSON())
    det_score: Mapped[float] = mapped_column(Float())
    landmarks: Mapped[list[list[float]] | None] = mapped_column(JSON())
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    identity: Mapped[Identity] = relationship(back_populates="faces")

    def __repr__(self) -> str:
        return f"Face(key={self.key}, id={self.id!s}, identity_id={self.identity_id!s}, model={self.model!r})"


class ApiKey(Base):
    """An API key: only a hash of its secret is stored; the secret itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    # The token's first characters, so a person can tell keys apart in a listing; too short to authenticate.
    prefix: Mapped[str] = mapped_column(String(16))
    # Hex SHA-256 of the whole token; lookups go through this unique index.
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON())
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Why keep revoked rows: the audit log names keys by id, and a revoked key must never come back.
    revoked_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!s}, name={self.name!r}, prefix={self.prefix!r}, scopes={self.scopes!r})"


class AuditEvent(Base):
    """Who did what, when: enrollments, deletions and key changes. Holds ids, never names or biometrics."""

    __tablename__ = "audit_events"
    # Why AUTOINCREMENT on SQLite: event ids only grow, so "newer than id N" is a stable way to page.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(FACE_KEY_TYPE, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # A readable description of the caller ("key fbk_AbCd1234 (ci-bot)", "cli alice", "anonymous loopback").
    actor: Mapped[str] = mapped_column(String(200))
    # No foreign key: the event outlives nothing it names, and keys are revoked, not deleted.
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column()
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON())

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id}, action={self.action!r}, target_id={self.target_id!r})"


class Change(Base):
    """The change log: one row per write that changes what a search may return, committed in the same
    transaction as the write and numbered in commit order; every process follows it to keep its index in step
    (service/storage/changes.py)."""

    __tablename__ = "changes"
    # Why AUTOINCREMENT on SQLite: positions only grow; a pruned highest id must not be handed out again.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(FACE_KEY_TYPE, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # face.added, face.removed, identity.removed, embedder.switched
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(128))
    face_key: Mapped[int | None] = mapped_column(BigInteger())
    identity_id: Mapped[uuid.UUID | None] = mapped_column()

    def __repr__(self) -> str:
        return f"Change(id={self.id}, kind={self.kind!r}, face_key={self.face_key}, model={self.model!r})"


class ServiceSetting(Base):
    """Service-wide choices that every app process must agree on, e.g. the active embedder (`name@version`).

    Why in SQL: several processes share one database, and a choice kept in each one's environment could
    differ between them; the database is the one place they all read.
    """

    __tablename__ = "service_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"ServiceSetting(key={self.key!r}, value={self.value!r})"
