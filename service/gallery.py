"""The gallery: SQL rows are the truth, the vector index is a cache rebuilt from them.

Writes commit to SQL first and then touch the index, so a crash between the two leaves SQL right
and the next start rebuilds the index. Reads filter out keys whose rows are already gone.

Index updates come only from the change log, applied in commit order by the process's follower
(service/follower.py) under `Gallery.writing()`: an enrollment that commits just before its identity is
deleted is always removed, never re-added after the deletion's removal.

Two stores sit behind the one `SearchGallery` interface that the follower and the API use: `Gallery` here
(an in-process FAISS index and its key → identity map; each process holds and fills its own) and
`MilvusGallery` (service/milvus_gallery.py: one shared Milvus collection per embedder, filled by one elected
process). `gallery_for` picks one from the settings.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy.orm import Session

from service.index import IndexNeedsRebuild, VectorIndex
from service.schemas import Match
from service.storage import repository as repo
from service.templates import candidates_for, rescored

if TYPE_CHECKING:
    from service.config import IdentityScore, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexAudit:
    sql_faces: int
    index_faces: int
    missing_from_index: int
    stale_in_index: int
    # Up to ten of each, for a report.
    missing_keys: list[int] = field(default_factory=list)
    stale_keys: list[int] = field(default_factory=list)

    @property
    def in_step(self) -> bool:
        return self.missing_from_index == 0 and self.stale_in_index == 0

    @classmethod
    def of(cls, sql_keys: np.ndarray, index_keys: np.ndarray, stale: np.ndarray) -> IndexAudit:
        """The audit of a store holding `index_keys` (distinct) against SQL's `sql_keys` (distinct), given
        the keys it holds wrongly (`stale`: each store knows its own ways of going stale)."""
        missing = np.setdiff1d(sql_keys, index_keys, assume_unique=True)
        return cls(
            sql_faces=len(sql_keys),
            index_faces=len(index_keys),
            missing_from_index=len(missing),
            stale_in_index=len(stale),
            missing_keys=missing[:10].tolist(),
            stale_keys=stale[:10].tolist(),
        )


class SearchGallery(Protocol):
    """What the change-log follower and the API need of a store of one embedder's faces."""

    model_tag: str
    # True when every process searches one store that a single elected process fills (Milvus); False when
    # each process fills its own (FAISS).
    shared: bool

    @property
    def applies(self) -> bool:
        """Whether this process writes the change log into the store (always, for a store of its own)."""

    def writing(self) -> AbstractContextManager[None]: ...
    def rebuild(self) -> int: ...
    def holds(self, key: int) -> bool: ...
    def added(self, key: int, identity_id: uuid.UUID, embedding: np.ndarray) -> None: ...
    def removed(self, keys: Sequence[int], *, identity_id: uuid.UUID | None = None) -> None: ...
    def identify(self, embeddings: np.ndarray, k: int) -> list[list[Match]]: ...
    def audit(self, *, since_rebuild: bool = False) -> IndexAudit: ...
    def face_count(self) -> int: ...

    def store_problem(self) -> str | None:
        """Why the store cannot answer searches now (for /readyz), or None."""

    def applied_position(self) -> int | None:
        """The change-log position the shared store holds (None: unknown, resync); unused when not shared."""

    def mark_applied(self, position: int) -> None:
        """Record in the store that it holds every change up to `position` (shared stores)."""

    def wait_applied(self, position: int) -> bool:
        """Wait (bounded) until the store holds `position`; True when it does."""

    def set_writer(self, writer: bool) -> None:
        """Shared stores: whether this process was elected to write (the follower says)."""


def gallery_for(
    settings: Settings, sessions: Callable[[], Session], model_tag: str, dim: int, *, writer: bool = False
) -> SearchGallery:
    """The gallery FACEBANK_VECTOR_STORE names; `writer`: whether this process is the elected writer of a
    shared store. Raises VectorStoreRefused (one line) when Milvus cannot serve this model."""
    if settings.vector_store == "milvus":
        from service.index.milvus import MilvusStore, MilvusTarget
        from service.milvus_gallery import MilvusGallery

        store = MilvusStore.open(MilvusTarget.of(settings), model_tag=model_tag, dim=dim)
        return MilvusGallery(
            store,
            sessions,
            wait_s=settings.milvus_applied_wait_s,
            writer=writer,
            identity_score=settings.identity_score,
        )
    from service.index import index_for

    return Gallery(index_for(settings, dim), sessions, model_tag, identity_score=settings.identity_score)


def name_matches(
    sessions: Callable[[], Session], ranked: list[list[tuple[uuid.UUID, float]]], k: int
) -> list[list[Match]]:
    """Ranked (identity, score) rows as Matches with names from SQL; an identity deleted after the search
    is dropped rather than reported by a stale name."""
    wanted = {identity for row in ranked for identity, _ in row}
    if not wanted:
        return [[] for _ in ranked]
    with sessions() as session:
        names = repo.identity_names(session, identity_ids=list(wanted))
    return [
        [Match(identity_id=i, name=names[i], score=s) for i, s in row if i in names][:k] for row in ranked
    ]


class Gallery:
    """Maps index keys to identities and ranks identities (service/templates.py) from one process's FAISS
    index."""

    shared = False
    applies = True

    def __init__(
        self,
        index: VectorIndex,
        session_factory: Callable[[], Session],
        model_tag: str,
        *,
        identity_score: IdentityScore = "mean",
    ) -> None:
        self.index = index
        self.model_tag = model_tag
        self.identity_score: IdentityScore = identity_score
        self._sessions = session_factory
        self._owner: dict[int, uuid.UUID] = {}
        self._keys_of: dict[uuid.UUID, set[int]] = {}
        self._lock = threading.Lock()
        # Held by the follower while it applies changes, and by rebuild and audit; never while searching.
        self._write_lock = threading.RLock()
        # The keys the last rebuild read from SQL, until a write goes through this gallery: an audit right
        # after a rebuild can compare with them instead of reading SQL a second time (start-up at 1M faces
        # spent 9.6 s re-reading every embedding).
        self._rebuilt_keys: np.ndarray | None = None

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold around `added`/`removed` calls (the follower does) so that an audit sees one moment."""
        with self._write_lock:
            yield

    def rebuild(self) -> int:
        """Reload every embedding of the active model from SQL; returns the number of faces."""
        owners: dict[int, uuid.UUID] = {}
        loaded: list[np.ndarray] = []
        with self._write_lock, self._lock:
            self._rebuilt_keys = None
            self.index.reset()
            with self._sessions() as session:
                for keys, vectors, identity_ids in repo.iter_embeddings(session, model=self.model_tag):
                    self.index.add(keys, vectors)
                    owners.update(zip(keys.tolist(), identity_ids, strict=True))
                    loaded.append(keys)
            self._owner = owners
            self._keys_of = {}
            for key, owner in owners.items():
                self._keys_of.setdefault(owner, set()).add(key)
            self._rebuilt_keys = _sorted_distinct(np.concatenate(loaded)) if loaded else np.empty(0, np.int64)
        log.info("index rebuilt from SQL: %d faces of model %s", len(owners), self.model_tag)
        return len(owners)

    def holds(self, key: int) -> bool:
        with self._lock:
            return key in self._owner

    def added(self, key: int, identity_id: uuid.UUID, embedding: np.ndarray) -> None:
        """Record a face already committed to SQL."""
        try:
            with self._lock:
                self._rebuilt_keys = None
                self.index.add(np.array([key]), embedding[None, :])
                self._owner[key] = identity_id
                self._keys_of.setdefault(identity_id, set()).add(key)
        except IndexNeedsRebuild:
            self._rebuild_after_failure()

    def removed(self, keys: Sequence[int], *, identity_id: uuid.UUID | None = None) -> None:
        """Forget faces already deleted from SQL; with `identity_id`, every face of that identity too.

        Why both: on SQLite the keys an identity deletion lists are read before its DELETE, so a face
        committed in between is removed by the database's cascade without being listed.
        """
        try:
            with self._lock:
                self._rebuilt_keys = None
                doomed = set(keys)
                if identity_id is not None:
                    doomed |= self._keys_of.pop(identity_id, set())
                self.index.remove(np.fromiter(doomed, dtype=np.int64, count=len(doomed)))
                for key in doomed:
                    owner = self._owner.pop(key, None)
                    if owner is not None and (owned := self._keys_of.get(owner)) is not None:
                        owned.discard(key)
                        if not owned:
                            del self._keys_of[owner]
        except IndexNeedsRebuild:
            self._rebuild_after_failure()

    def _rebuild_after_failure(self) -> None:
        # The write is already committed, so SQL holds the right state: reload it rather than fail requests.
        log.error("the vector index lost track of its vectors; rebuilding it from SQL")
        self.rebuild()

    def identify(self, embeddings: np.ndarray, k: int) -> list[list[Match]]:
        """Top-k identities per query, scored by the gallery's identity score rule."""
        queries = np.asarray(embeddings, np.float32).reshape(-1, self.index.dim)
        wanted = candidates_for(k, self.identity_score)
        try:
            by_best_face = self._rank_identities(queries, wanted)
        except IndexNeedsRebuild:
            self._rebuild_after_failure()
            by_best_face = self._rank_identities(queries, wanted)
        with self._lock:
            several = {i for row in by_best_face for i, _ in row if len(self._keys_of.get(i, ())) > 1}
        ranked = rescored(
            self._sessions,
            self.model_tag,
            queries,
            by_best_face,
            k,
            self.identity_score,
            several_faces=several,
        )
        return name_matches(self._sessions, ranked, k)

    def face_count(self) -> int:
        return len(self.index)

    def store_problem(self) -> str | None:
        return None  # in this process's memory

    def applied_position(self) -> int | None:
        return None  # the follower's own position is this index's

    def mark_applied(self, position: int) -> None:
        pass

    def wait_applied(self, position: int) -> bool:
        return True  # this process applied it itself

    def set_writer(self, writer: bool) -> None:
        pass  # every process writes its own index

    def _rank_identities(self, queries: np.ndarray, k: int) -> list[list[tuple[uuid.UUID, float]]]:
        """All queries go to the index in one call (a micro-batch is one search); only the queries whose top
        is crowded by many faces of one person are searched again, deeper."""
        ranked: list[list[tuple[uuid.UUID, float]]] = [[] for _ in range(len(queries))]
        with self._lock:
            # Asking for more people than the gallery holds must not deepen the search to every face.
            k = min(k, len(self._keys_of))
        total = len(self.index)
        pending = np.arange(len(queries))
        depth = min(total, max(4 * k, 32))
        while depth > 0 and len(pending):
            result = self.index.search(queries[pending], depth)
            deeper = []
            with self._lock:
                for row, query_number in enumerate(pending.tolist()):
                    best: dict[uuid.UUID, float] = {}
                    for key, score in zip(result.ids[row].tolist(), result.scores[row].tolist(), strict=True):
                        owner = self._owner.get(key)
                        if owner is not None and owner not in best:
                            best[owner] = float(score)
                    if len(best) >= k or depth >= total:
                        ranked[query_number] = sorted(best.items(), key=lambda item: -item[1])[:k]
                    else:
                        deeper.append(query_number)
            pending = np.asarray(deeper, dtype=np.int64)
            depth = min(total, depth * 4)
        return ranked

    def audit(self, *, since_rebuild: bool = False) -> IndexAudit:
        """Compare the index with SQL; writers are held off meanwhile, so both are seen at one moment.

        With `since_rebuild`, and when no write went through this gallery since its last `rebuild()`, the
        keys that rebuild read stand in for SQL (for the check right after a start-up rebuild); a change
        another process made to SQL since then is not seen that way. Otherwise SQL's keys are read (keys
        only, from the model's index; not the embeddings).
        """
        with self._write_lock:
            with self._lock:
                remembered = self._rebuilt_keys if since_rebuild else None
            if remembered is not None:
                sql_keys = remembered
            else:
                with self._sessions() as session:
                    sql_keys = self._sql_keys(session)
            index_keys = _sorted_distinct(self.index.ids())
            with self._lock:
                owned = np.fromiter(self._owner, dtype=np.int64, count=len(self._owner))
            owned_keys = _sorted_distinct(owned)
        # A key in the index that SQL lacks, or one the owner map forgot, is stale either way.
        stale = _sorted_distinct(
            np.concatenate(
                [
                    np.setdiff1d(index_keys, sql_keys, assume_unique=True),
                    np.setxor1d(index_keys, owned_keys, assume_unique=True),
                ]
            )
        )
        return IndexAudit.of(sql_keys, index_keys, stale)

    def _sql_keys(self, session: Session) -> np.ndarray:
        """Sorted face keys of this gallery's model in SQL."""
        return _sorted_distinct(np.asarray(repo.face_keys_of_model(session, model=self.model_tag), np.int64))


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; by sorting, as `np.unique` (hash-based in NumPy 2.4) took 1 s for 1M here."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]
