"""Storing identities and faces: the one unit of work behind `POST /v1/identities`, `POST
/v1/identities/{id}/faces`, embedded `facebank ingest`, and anything later that stores faces.

In this order, in one place: the active-model check (a share lock that holds off `facebank models use`
until the commit), the rows, their audit events and change-log entries, the commit, then this process's
index, through the change log like every other process's (service/follower.py). SQL first: a crash after
the commit leaves SQL right, and the index catches up from the log or the next start's rebuild.

Usage::

    with enrolment.begin(session, model=tag, actor=caller, follower=follower) as unit:
        identity = unit.create_identity(name="Ada Lovelace")
        unit.add_face(identity.id, detected, embedding, image_sha256=digest)
    # committed, audited and searchable here; an exception inside stores nothing
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.follower import ChangeFollower
from service.schemas import DetectedFace
from service.security import Actions, Principal, record
from service.storage import repository as repo
from service.storage import service_settings
from service.storage.tables import Face, Identity


class EmbedderSwitched(RuntimeError):
    """`facebank models use` made another embedder active than the one these faces were embedded with."""

    def __init__(self, *, active: str, model: str) -> None:
        super().__init__(f"the active embedder is {active}, not {model}")
        self.active = active
        self.model = model


def create_identity(
    session: Session,
    actor: Principal,
    *,
    name: str,
    external_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Identity:
    """Add an identity and its audit event to the caller's transaction (`repo.Conflict` on a taken
    external_id)."""
    identity = repo.create_identity(session, name=name, external_id=external_id, metadata=metadata)
    record(session, actor, Actions.IDENTITY_CREATE, "identity", identity.id)
    return identity


class Enrolment:
    """One transaction's identities and faces; made by :func:`begin`, which checks and commits."""

    def __init__(self, session: Session, *, model: str, actor: Principal) -> None:
        self._session, self._model, self._actor = session, model, actor

    def create_identity(
        self, *, name: str, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Identity:
        return create_identity(
            self._session, self._actor, name=name, external_id=external_id, metadata=metadata
        )

    def add_face(
        self, identity_id: uuid.UUID, face: DetectedFace, embedding: np.ndarray, *, image_sha256: str
    ) -> Face:
        """The face row (flushed: its index key is known) and its audit event."""
        row = repo.add_face(
            self._session,
            identity_id=identity_id,
            embedding=embedding,
            model=self._model,
            bbox=[float(v) for v in face.bbox],
            det_score=face.score,
            landmarks=face.landmarks.tolist(),
            image_sha256=image_sha256,
        )
        detail = {"identity_id": str(identity_id), "model": self._model}
        record(self._session, self._actor, Actions.FACE_ENROLL, "face", row.id, detail)
        return row


@contextmanager
def begin(
    session: Session, *, model: str, actor: Principal, follower: ChangeFollower | None = None
) -> Iterator[Enrolment]:
    """Check that `model` is still the active embedder (:class:`EmbedderSwitched` if not), hand out the unit,
    then commit and let `follower` bring this process's index up to the commit (a process without an index
    passes None). Nothing is committed when the block raises; the caller rolls the session back."""
    active = service_settings.switched_away_from(session, model, lock=True)
    if active is not None:
        raise EmbedderSwitched(active=active, model=model)
    unit = Enrolment(session, model=model, actor=actor)
    yield unit
    session.commit()
    if follower is not None:
        follower.after_write()
