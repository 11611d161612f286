"""Repository functions behind `facebank doctor`: find faces the index cannot use, and remove them.

Keyword-only; none of them commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from service.storage import changes
from service.storage.tables import Face

# Why: PostgreSQL and SQLite cap bound parameters; key lists are sent in chunks well below that.
_IN_CHUNK = 1000


def identities_missing_model(session: Session, *, model: str) -> list[uuid.UUID]:
    """Identities with faces, but none embedded with `model`: search cannot find them until re-enrolled."""
    others = select(Face.identity_id).where(Face.model != model)
    current = select(Face.identity_id).where(Face.model == model)
    query = others.except_(current)
    return sorted(session.scalars(query), key=str)


def face_keys_of_other_models(session: Session, *, model: str) -> list[int]:
    return list(session.scalars(select(Face.key).where(Face.model != model).order_by(Face.key)))




def identities_only_with_model(session: Session, *, model: str) -> list[uuid.UUID]:
    """Identities all of whose faces are of `model`: deleting those faces leaves them with none."""
    of_model = select(Face.identity_id).where(Face.model == model)
    others = select(Face.identity_id).where(Face.model != model)
    return sorted(session.scalars(of_model.except_(others)), key=str)


def malformed_face_keys(session: Session, *, model: str, dim: int) -> list[int]:
    """Faces of `model` whose stored vector does not have `dim` float32 values."""
    query = (
        select(Face.key)
        .where(Face.model == model)
        .where(or_(Face.dim != dim, func.length(Face.embedding) != dim * 4))
        .order_by(Face.key)
    )
    return list(session.scalars(query))


def delete_faces(session: Session, *, keys: Iterable[int]) -> list[tuple[int, uuid.UUID, uuid.UUID]]:
    """Delete faces by key; returns `(key, face id, identity id)` of each face that existed."""
    deleted: list[tuple[int, uuid.UUID, uuid.UUID]] = []
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        rows = session.execute(
            select(Face.key, Face.id, Face.identity_id).where(Face.key.in_(chunk)).order_by(Face.key)
        ).all()
        session.execute(delete(Face).where(Face.key.in_(chunk)))
        deleted.extend((key, face_id, identity_id) for key, face_id, identity_id in rows)
    session.flush()
    for key, _face_id, identity_id in deleted:
        changes.note(session, changes.FACE_REMOVED, face_key=key, identity_id=identity_id)
    return deleted


def iter_vectors(
    session: Session, *, model: str, dim: int, batch_size: int = 10000
) -> Iterator[tuple[int, bytes]]:
    """`(key, embedding bytes)` of the faces of `model` whose vector has the right size, in key order."""
    query = (
        select(Face.key, Face.embedding)
        .where(Face.model == model, Face.dim == dim, func.length(Face.embedding) == dim * 4)
        .order_by(Face.key)
        .execution_options(yield_per=batch_size)
    )
    for key, blob in session.execute(query):
        yield int(key), bytes(blob)
