"""Repository functions over a `Session`.

Every function is keyword-only and leaves the transaction to the caller: none of them commits. They flush
where the caller needs database-assigned values (a face's `key`) or where constraint errors must surface.
After a `Conflict` raised by the unique constraint (a race the pre-check missed) the transaction is rolled
back; call `session.rollback()` before reusing the session.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
from sqlalchemy import Row, Select, String, func, or_, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.storage import changes
from service.storage.tables import Face, Identity

# Why little-endian explicitly: stored bytes must read back identically on any machine.
EMBEDDING_DTYPE: Final = np.dtype("<f4")

# Why bounded: the cache only saves rebuilding a UUID for an identity's next face, which is usually nearby.
_UUID_CACHE_MAX = 100_000

# Why: SQLite caps bound parameters per statement; IN lists are sent in chunks well below that.
_IN_CHUNK = 1000


class StorageError(Exception):
    """Base class of the errors raised by the storage layer."""


class Conflict(StorageError):
    """A unique field already holds the given value; `field` names it."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already exists")
        self.field = field


class InvalidCursor(StorageError):
    """A pagination cursor that this module did not produce."""


class _Unset(enum.Enum):
    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


# Marks an argument that was not given, as opposed to an explicit None.
UNSET: Final = _Unset.UNSET


# --- embeddings ----------------------------------------------------------------------------------------


def to_bytes(vec: np.ndarray) -> bytes:
    """Serialise a 1-D float32 embedding as little-endian bytes."""
    if vec.ndim != 1 or vec.size == 0:
        raise ValueError(f"embedding must be a non-empty 1-D array, got shape {vec.shape}")
    if vec.dtype.kind != "f" or vec.dtype.itemsize != 4:
        # Why: silently narrowing float64 would store something other than what the model produced.
        raise ValueError(f"embedding must be float32, got {vec.dtype}")
    if not np.isfinite(vec).all():
        raise ValueError("embedding contains NaN or infinity")
    return vec.astype(EMBEDDING_DTYPE, copy=False).tobytes()


def from_bytes(b: bytes, dim: int) -> np.ndarray:
    """Read an embedding written by `to_bytes` back as a writable native float32 array of length `dim`."""
    if len(b) != dim * EMBEDDING_DTYPE.itemsize:
        raise ValueError(f"expected {dim * EMBEDDING_DTYPE.itemsize} bytes for dim {dim}, got {len(b)}")
    return np.frombuffer(b, dtype=EMBEDDING_DTYPE).astype(np.float32, copy=True)


# --- identities ----------------------------------------------------------------------------------------


def _external_id_taken(session: Session, external_id: str, *, excluding: uuid.UUID | None = None) -> bool:
    query = select(Identity.id).where(Identity.external_id == external_id)
    if excluding is not None:
        query = query.where(Identity.id != excluding)
    return session.execute(query.limit(1)).first() is not None


def _flush_or_conflict(session: Session) -> None:
    """Flush; a unique violation on external_id (a race the pre-check missed) becomes `Conflict`."""
    try:
        session.flush()
    except IntegrityError as exc:
        if "external_id" in str(exc.orig):
            raise Conflict("external_id") from exc
        raise


def create_identity(
    session: Session,
    *,
    name: str,
    external_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Identity:
    # Why check first: the common duplicate is reported without poisoning the caller's transaction.
    if external_id is not None and _external_id_taken(session, external_id):
        raise Conflict("external_id")
    identity = Identity(name=name, external_id=external_id, metadata_=metadata)
    session.add(identity)
    _flush_or_conflict(session)
    return identity


def get_identity(session: Session, *, identity_id: uuid.UUID) -> Identity | None:
    return session.get(Identity, identity_id)


def _encode_cursor(identity: Identity) -> str:
    payload = json.dumps({"c": identity.created_at.isoformat(), "i": identity.id.hex}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        created_at = datetime.fromisoformat(payload["c"])
        identity_id = uuid.UUID(hex=payload["i"])
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        # ValueError covers bad UTF-8, bad JSON, bad dates and bad UUIDs.
        raise InvalidCursor("malformed cursor") from exc
    if created_at.tzinfo is None:
        raise InvalidCursor("malformed cursor")
    return created_at, identity_id


def list_identities(
    session: Session, *, limit: int, cursor: str | None = None, name_contains: str | None = None
) -> tuple[list[Identity], str | None]:
    """One page of identities, oldest first, and the cursor of the next page (None on the last page);
    with `name_contains`, only those whose name contains it (case-insensitively for ASCII)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = select(Identity).order_by(Identity.created_at, Identity.id)
    if name_contains:
        pattern = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Identity.name.ilike(f"%{pattern}%", escape="\\"))
    if cursor is not None:
        created_at, identity_id = _decode_cursor(cursor)
        # Why keyset, not OFFSET: each page costs the same however deep it is, and inserts do not shift pages.
        query = query.where(
            or_(
                Identity.created_at > created_at,
                (Identity.created_at == created_at) & (Identity.id > identity_id),
            )
        )
    # One row more than asked says whether a next page exists.
    rows = list(session.scalars(query.limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, _encode_cursor(page[-1])


def update_identity(
    session: Session,
    *,
    identity_id: uuid.UUID,
    name: str | _Unset = UNSET,
    external_id: str | _Unset | None = UNSET,
    metadata: dict[str, Any] | _Unset | None = UNSET,
) -> Identity | None:
    """Change the given fields; fields left UNSET are kept. None when the identity does not exist."""
    identity = session.get(Identity, identity_id)
    if identity is None:
        return None
    if name is not UNSET:
        identity.name = name
    if external_id is not UNSET:
        if external_id is not None and _external_id_taken(session, external_id, excluding=identity_id):
            raise Conflict("external_id")
        identity.external_id = external_id
    if metadata is not UNSET:
        identity.metadata_ = metadata
    # updated_at moves on flush (its onupdate) only when an UPDATE is really emitted.
    _flush_or_conflict(session)
    return identity


def delete_identity(session: Session, *, identity_id: uuid.UUID) -> list[int] | None:
    """Delete an identity and its faces; return the deleted face keys (for the index), None if not found."""
    # Why lock the row: adding a face takes a share lock on it (the foreign key), so a concurrent add either
    # committed before and is listed below, or fails after we commit. No face goes unreported.
    identity = session.get(Identity, identity_id, with_for_update=True)
    if identity is None:
        return None
    keys = list(session.scalars(select(Face.key).where(Face.identity_id == identity_id).order_by(Face.key)))
    # Faces not loaded in the session are removed by the database's ON DELETE CASCADE (passive_deletes).
    session.delete(identity)
    session.flush()
    changes.note(session, changes.IDENTITY_REMOVED, identity_id=identity_id)
    return keys


def identity_handles(session: Session) -> list[tuple[uuid.UUID, str, str | None]]:
    """`(id, name, external_id)` of every identity, oldest first (what ingest matches photos by)."""
    query = select(Identity.id, Identity.name, Identity.external_id).order_by(
        Identity.created_at, Identity.id
    )
    return [(identity_id, name, external_id) for identity_id, name, external_id in session.execute(query)]


def find_identity_id(
    session: Session, *, external_id: str | None = None, name: str | None = None
) -> uuid.UUID | None:
    """The identity with this external_id, else the oldest with exactly this name; None if there is none."""
    if (external_id is None) == (name is None):
        raise ValueError("give exactly one of external_id and name")
    query = select(Identity.id)
    if external_id is not None:
        query = query.where(Identity.external_id == external_id)
    else:
        query = query.where(Identity.name == name).order_by(Identity.created_at, Identity.id)
    return session.execute(query.limit(1)).scalar_one_or_none()


def identity_names(session: Session, *, identity_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Names of the identities that exist among `identity_ids`."""
    names: dict[uuid.UUID, str] = {}
    for chunk in _chunks(identity_ids):
        query = select(Identity.id, Identity.name).where(Identity.id.in_(chunk))
        names.update({identity_id: name for identity_id, name in session.execute(query)})
    return names


# --- faces ---------------------------------------------------------------------------------------------


def add_face(
    session: Session,
    *,
    identity_id: uuid.UUID,
    embedding: np.ndarray,
    model: str,
    bbox: Sequence[float],
    det_score: float,
    landmarks: Sequence[Sequence[float]] | None,
    image_sha256: str,
) -> Face:
    """Store one face; flushed, so `key` (its FAISS id) is assigned on return."""
    if len(bbox) != 4:
        raise ValueError(f"bbox must have 4 numbers, got {len(bbox)}")
    face = Face(
        identity_id=identity_id,
        embedding=to_bytes(embedding),
        dim=int(embedding.shape[0]),
        model=model,
        bbox=[float(v) for v in bbox],
        det_score=float(det_score),
        landmarks=None if landmarks is None else [[float(v) for v in point] for point in landmarks],
        image_sha256=image_sha256,
    )
    session.add(face)
    session.flush()
    changes.note(session, changes.FACE_ADDED, model=model, face_key=face.key, identity_id=identity_id)
    return face


def get_face(session: Session, *, identity_id: uuid.UUID, face_id: uuid.UUID) -> Face | None:
    """The face `face_id` if it belongs to `identity_id`."""
    return session.scalars(
        select(Face).where(Face.id == face_id, Face.identity_id == identity_id)
    ).one_or_none()


def delete_face(session: Session, *, identity_id: uuid.UUID, face_id: uuid.UUID) -> int | None:
    """Delete a face of `identity_id`; return its key, None if no such face belongs to that identity."""
    face = get_face(session, identity_id=identity_id, face_id=face_id)
    if face is None:
        return None
    key = face.key
    session.delete(face)
    session.flush()
    changes.note(session, changes.FACE_REMOVED, model=face.model, face_key=key, identity_id=identity_id)
    return key


def list_faces(session: Session, *, identity_id: uuid.UUID) -> list[Face]:
    return list(session.scalars(select(Face).where(Face.identity_id == identity_id).order_by(Face.key)))


def face_counts(session: Session, *, identity_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Number of faces of each given identity, 0 included."""
    ids = list(dict.fromkeys(identity_ids))
    counts = dict.fromkeys(ids, 0)
    for chunk in _chunks(ids):
        query = (
            select(Face.identity_id, func.count())
            .where(Face.identity_id.in_(chunk))
            .group_by(Face.identity_id)
        )
        counts.update({identity_id: count for identity_id, count in session.execute(query)})
    return counts


def find_face_by_image(
    session: Session, *, identity_id: uuid.UUID, image_sha256: str, model: str
) -> Face | None:
    """The first face enrolled from this image for this identity and model (ingest idempotency)."""
    query = (
        select(Face)
        .where(Face.identity_id == identity_id, Face.image_sha256 == image_sha256, Face.model == model)
        .order_by(Face.key)
        .limit(1)
    )
    return session.scalars(query).first()


def images_already_in(
    session: Session, *, model: str, image_sha256s: Iterable[str]
) -> set[tuple[uuid.UUID, str]]:
    """(identity id, image sha256) of the faces of `model` already stored from these images, in one query."""
    query = select(Face.identity_id, Face.image_sha256).where(
        Face.model == model, Face.image_sha256.in_(set(image_sha256s))
    )
    return {(identity_id, sha256) for identity_id, sha256 in session.execute(query)}


def count_faces(session: Session, *, model: str | None = None) -> int:
    query = select(func.count()).select_from(Face)
    if model is not None:
        query = query.where(Face.model == model)
    return session.execute(query).scalar_one()


def face_keys_of_model(session: Session, *, model: str) -> list[int]:
    """Keys of the faces embedded with `model`, ascending."""
    return list(session.scalars(select(Face.key).where(Face.model == model).order_by(Face.key)))


def models_in_use(session: Session) -> dict[str, int]:
    """Face count per embedding model."""
    query = select(Face.model, func.count()).group_by(Face.model).order_by(Face.model)
    return {model: count for model, count in session.execute(query)}


def embeddings_of(
    session: Session, *, keys: Iterable[int], model: str
) -> dict[int, tuple[uuid.UUID, np.ndarray]]:
    """`{key: (identity id, vector)}` of the faces of `model` among `keys` that still exist."""
    found: dict[int, tuple[uuid.UUID, np.ndarray]] = {}
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), _IN_CHUNK):
        query = select(Face.key, Face.identity_id, Face.embedding, Face.dim).where(
            Face.key.in_(wanted[start : start + _IN_CHUNK]), Face.model == model
        )
        for key, identity_id, blob, dim in session.execute(query):
            found[int(key)] = (identity_id, from_bytes(blob, dim))
    return found


def embeddings_of_identities(
    session: Session, *, identity_ids: Iterable[uuid.UUID], model: str
) -> dict[uuid.UUID, np.ndarray]:
    """`{identity id: vectors (n, dim)}` of every face of `model` of those identities that still exist."""
    found: dict[uuid.UUID, list[np.ndarray]] = {}
    for chunk in _chunks(identity_ids):
        # Why the model is compared here, not in SQL: with both conditions SQLite chose the model's index,
        # which every face matches (a search among 30k faces took 41 ms instead of 7).
        query = select(Face.identity_id, Face.embedding, Face.dim, Face.model).where(
            Face.identity_id.in_(chunk)
        )
        for identity_id, blob, dim, face_model in session.execute(query):
            if face_model == model:
                found.setdefault(identity_id, []).append(from_bytes(blob, dim))
    return {identity_id: np.stack(vectors) for identity_id, vectors in found.items()}


def iter_embeddings(
    session: Session, *, model: str, batch_size: int = 10000
) -> Iterator[tuple[np.ndarray, np.ndarray, list[uuid.UUID]]]:
    """Stream `(keys int64 (n,), vectors float32 (n, dim), identity_ids)` of one model in key order.

    Used to rebuild the index at start, so it reads only three columns, streams (a binary server-side cursor
    on PostgreSQL) and turns each batch into arrays with a single buffer join.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    query = (
        # Why type_coerce: SQLite hands back hex strings, and building a UUID per row is the slowest step;
        # `_uuids` builds one per identity instead. The SQL is unchanged.
        select(Face.key, type_coerce(Face.identity_id, String()), Face.embedding)
        .where(Face.model == model)
        .order_by(Face.key)
        .execution_options(yield_per=batch_size)
    )
    cache: dict[str, uuid.UUID] = {}
    for rows in _stream(session, query, batch_size=batch_size):
        if len(cache) > _UUID_CACHE_MAX:
            cache.clear()
        keys, identity_ids, blobs = zip(*rows, strict=True)
        width = len(blobs[0])
        if width % EMBEDDING_DTYPE.itemsize or any(len(b) != width for b in blobs):
            raise StorageError(f"model {model!r} has embeddings of different sizes")
        # Why bytearray: one copy that also makes the array writable (FAISS normalises in place).
        buffer = bytearray(b"".join(blobs))
        dim = width // EMBEDDING_DTYPE.itemsize
        vectors = np.frombuffer(buffer, dtype=EMBEDDING_DTYPE).reshape(len(rows), dim)
        yield (
            np.fromiter(keys, dtype=np.int64, count=len(rows)),
            vectors.astype(np.float32, copy=False),
            _uuids(identity_ids, cache),
        )


def _uuids(values: Sequence[str | uuid.UUID], cache: dict[str, uuid.UUID]) -> list[uuid.UUID]:
    out: list[uuid.UUID] = []
    for value in values:
        if isinstance(value, uuid.UUID):  # drivers with a native uuid type
            out.append(value)
        elif (known := cache.get(value)) is not None:
            out.append(known)
        else:
            out.append(cache.setdefault(value, uuid.UUID(value)))
    return out


def _stream(
    session: Session, query: Select[int, str, bytes], *, batch_size: int
) -> Iterator[Sequence[Row[int, str, bytes]] | list[tuple[Any, ...]]]:
    """Rows of `query` in lists of up to `batch_size`, through a server-side cursor where there is one."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        yield from session.execute(query).partitions()
        return
    # Why not through SQLAlchemy: it asks psycopg for text results, in which bytea travels hex-encoded (twice
    # the bytes, then decoded). A binary server-side cursor on the same connection and transaction halves the
    # time to rebuild the index at start. The SQL is still compiled from `query`.
    session.flush()
    compiled = query.compile(dialect=connection.dialect)
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    with driver_connection.cursor(name=f"facebank_stream_{uuid.uuid4().hex}", binary=True) as cursor:
        cursor.itersize = batch_size
        cursor.execute(str(compiled), compiled.params)
        while rows := cursor.fetchmany(batch_size):
            yield rows


def _chunks(items: Iterable[uuid.UUID]) -> Iterator[list[uuid.UUID]]:
    chunk: list[uuid.UUID] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == _IN_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
