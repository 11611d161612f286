"""Fill the service's tables quickly: bulk inserts through SQLAlchemy core, then read them back raw."""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import Engine, Table, insert

from bench.data import unit_vector_chunks
from service.storage.repository import EMBEDDING_DTYPE
from service.storage.tables import Face, Identity

# Synthetic people each get this many faces, as when a person is enrolled from a couple of photos.
FACES_PER_IDENTITY = 2
CHUNK = 20_000

IDENTITIES = cast(Table, Identity.__table__)
FACES = cast(Table, Face.__table__)


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    embedding: np.ndarray  # unit vector of the face enrolled for them


def _face_row(
    identity_id: uuid.UUID, embedding: np.ndarray, model: str, now: datetime, sha: str
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "identity_id": identity_id,
        "embedding": embedding.astype(EMBEDDING_DTYPE, copy=False).tobytes(),
        "dim": int(embedding.shape[0]),
        "model": model,
        "bbox": [0.0, 0.0, 1.0, 1.0],
        "det_score": 1.0,
        "landmarks": None,
        "image_sha256": sha,
        "created_at": now,
    }


def insert_people(engine: Engine, people: list[Person], *, model: str) -> dict[str, uuid.UUID]:
    """One identity per real person, named as in LFW, with their enrolled face; returns name → identity id."""
    now = datetime.now(UTC)
    ids = {p.name: uuid.uuid4() for p in people}
    with engine.begin() as connection:
        connection.execute(
            insert(IDENTITIES),
            [{"id": ids[p.name], "name": p.name, "created_at": now, "updated_at": now} for p in people],
        )
        connection.execute(
            insert(FACES),
            [
                _face_row(ids[p.name], p.embedding, model, now, hashlib.sha256(p.name.encode()).hexdigest())
                for p in people
            ],
        )
    return ids


def insert_synthetic(engine: Engine, count: int, *, model: str, dim: int, seed: int) -> float:
    """`count` random unit embeddings, FACES_PER_IDENTITY per synthetic identity; returns seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    sha = "0" * 64
    done = 0
    for block in unit_vector_chunks(count, dim, seed=seed, chunk=CHUNK):
        identity_ids = [uuid.uuid4() for _ in range(-(-len(block) // FACES_PER_IDENTITY))]
        identities = [
            {"id": i, "name": f"synthetic-{seed}-{done + n}", "created_at": now, "updated_at": now}
            for n, i in enumerate(identity_ids)
        ]
        faces = [
            _face_row(identity_ids[n // FACES_PER_IDENTITY], vector, model, now, sha)
            for n, vector in enumerate(block)
        ]
        with engine.begin() as connection:
            connection.execute(insert(IDENTITIES), identities)
            connection.execute(insert(FACES), faces)
        done += len(block)
    return time.perf_counter() - started


def raw_scan_s(database: str, model: str) -> tuple[float, int]:
    """Seconds to read every (key, identity, embedding) of `model` straight through sqlite3 into arrays."""
    started = time.perf_counter()
    connection = sqlite3.connect(database)
    try:
        cursor = connection.execute(
            "SELECT key, identity_id, embedding FROM faces WHERE model = ? ORDER BY key", (model,)
        )
        total = 0
        while rows := cursor.fetchmany(10_000):
            keys, _, blobs = zip(*rows, strict=True)
            np.frombuffer(b"".join(blobs), dtype=EMBEDDING_DTYPE)
            np.fromiter(keys, np.int64, len(keys))
            total += len(rows)
    finally:
        connection.close()
    return time.perf_counter() - started, total
