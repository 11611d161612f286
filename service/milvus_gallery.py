"""The gallery over a shared Milvus collection: every replica searches it, one elected process writes it.

The writer is the process whose change-log follower holds the writer lock (service/storage/locks.py); it
applies the log to the collection in commit order and records the applied position in the collection
(service/index/milvus.py). Other replicas hold nothing of the gallery: they search Milvus, which returns
identity ids itself, and after a write of their own wait (bounded) until the recorded position reaches it.

Writes of one applied batch are buffered under `writing()` and sent as three requests at its end (deletes,
identity deletions, upserts): keys never come back once deleted, so sending deletions first is the order of
the log.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy.orm import Session

from service.config import IdentityScore
from service.gallery import IndexAudit, name_matches
from service.index.milvus import MilvusStore, VectorStoreBehind, VectorStoreUnavailable, wait_until
from service.schemas import Match
from service.storage import changes
from service.storage import repository as repo
from service.templates import candidates_for, rescored

log = logging.getLogger(__name__)


class MilvusGallery:
    shared = True

    def __init__(
        self,
        store: MilvusStore,
        sessions: Callable[[], Session],
        *,
        wait_s: float,
        writer: bool = False,
        identity_score: IdentityScore = "mean",
    ) -> None:
        self.store = store
        self.model_tag = store.model_tag
        self.identity_score: IdentityScore = identity_score
        self._sessions = sessions
        self._wait_s = wait_s
        # Set by the follower: whether this process holds the writer lock now.
        self.writer = writer
        self._write_lock = threading.RLock()
        self._depth = 0
        self._upserts: dict[int, tuple[uuid.UUID, np.ndarray]] = {}
        self._deletes: set[int] = set()
        self._erased: set[uuid.UUID] = set()

    @property
    def applies(self) -> bool:
        return self.writer

    def set_writer(self, writer: bool) -> None:
        self.writer = writer

    # --- writes -----------------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Buffer the writes made inside; send them when the outermost block ends without error."""
        with self._write_lock:
            self._depth += 1
            try:
                yield
                if self._depth == 1:
                    self._flush()
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._upserts.clear()
                    self._deletes.clear()
                    self._erased.clear()

    def holds(self, key: int) -> bool:
        return False  # an upsert of a key already there replaces it: asking first would cost a request

    def added(self, key: int, identity_id: uuid.UUID, embedding: np.ndarray) -> None:
        with self.writing():
            self._upserts[key] = (identity_id, embedding)

    def removed(self, keys: Sequence[int], *, identity_id: uuid.UUID | None = None) -> None:
        with self.writing():
            for key in keys:
                self._upserts.pop(key, None)
                self._deletes.add(key)
            if identity_id is not None:
                self._erased.add(identity_id)
                for key in [k for k, (owner, _) in self._upserts.items() if owner == identity_id]:
                    del self._upserts[key]

    def _flush(self) -> None:
        self.store.delete(self._deletes)
        self.store.delete_identities(self._erased)
        if self._upserts:
            keys = np.fromiter(self._upserts, dtype=np.int64, count=len(self._upserts))
            owners = [owner for owner, _ in self._upserts.values()]
            self.store.upsert(keys, owners, np.stack([vector for _, vector in self._upserts.values()]))

    def rebuild(self) -> int:
        """Writer: re-sync the collection from SQL (upsert every face, delete what SQL lacks) without emptying
        it first, so readers keep answering. Reader: wait (bounded) for the writer to reach the log's head,
        VectorStoreBehind when it does not (e.g. still filling a new model's collection). Returns the number
        of faces."""
        if not self.writer:
            with self._sessions() as session:
                head = changes.head(session)
            if not self.wait_applied(head):
                raise VectorStoreBehind(
                    f"the writer has not brought Milvus collection {self.store.name} to change log position "
                    f"{head} within {self._wait_s:g} s"
                )
            return self.face_count()
        loaded: list[np.ndarray] = []
        with self._write_lock, self._sessions() as session:
            for keys, vectors, identity_ids in repo.iter_embeddings(session, model=self.model_tag):
                self.store.upsert(keys, identity_ids, vectors)
                loaded.append(keys)
            sql_keys = np.sort(np.concatenate(loaded)) if loaded else np.empty(0, np.int64)
            stale = np.setdiff1d(self.store.keys(), sql_keys, assume_unique=True)
            if len(stale):
                self.store.delete(stale.tolist())
                self.store.compact()
            self.store.flush()
        log.info(
            "Milvus collection %s re-synced from SQL: %d faces, %d stale removed",
            self.store.name,
            len(sql_keys),
            len(stale),
        )
        return len(sql_keys)

    def mark_applied(self, position: int) -> None:
        if self.writer:
            self.store.mark_applied(position)

    # --- reads ------------------------------------------------------------------------------------------

    def identify(self, embeddings: np.ndarray, k: int) -> list[list[Match]]:
        """Top-k identities per query: candidates by Milvus's grouping search (best face), ranked by the
        identity score rule (service/templates.py); VectorStoreUnavailable when Milvus fails."""
        queries = np.asarray(embeddings, np.float32).reshape(-1, self.store.dim)
        by_best_face = self.store.search_identities(queries, candidates_for(k, self.identity_score))
        ranked = rescored(self._sessions, self.model_tag, queries, by_best_face, k, self.identity_score)
        return name_matches(self._sessions, ranked, k)

    def face_count(self) -> int:
        return self.store.count()

    def store_problem(self) -> str | None:
        try:
            self.store.ping()
        except VectorStoreUnavailable as exc:
            return str(exc)
        return None

    def applied_position(self) -> int | None:
        return self.store.applied_position()

    def wait_applied(self, position: int) -> bool:
        def reached() -> bool:
            try:
                applied = self.store.applied_position()
            except VectorStoreUnavailable:
                return False
            return applied is not None and applied >= position

        return wait_until(reached, self._wait_s)

    def audit(self, *, since_rebuild: bool = False) -> IndexAudit:
        """Every key in the collection against SQL's keys of this model (`since_rebuild` changes nothing:
        the collection outlives processes, so SQL is always read)."""
        with self._write_lock:
            with self._sessions() as session:
                sql_keys = np.asarray(repo.face_keys_of_model(session, model=self.model_tag), np.int64)
            store_keys = self.store.keys()
        return IndexAudit.of(sql_keys, store_keys, np.setdiff1d(store_keys, sql_keys, assume_unique=True))
