"""Every process follows SQL: its index is rebuilt from SQL at start and then kept in step by applying the
change log (service/storage/changes.py) in order, from one background thread per process.

A process's own writes take the same way in: after committing, a request calls :meth:`catch_up`, which
applies everything up to the head, its own change included (read-your-writes on the replica that took the
write). Other processes see it at their next poll, or at once on PostgreSQL, whose NOTIFY wakes them.

Applying is idempotent (a face already in the index is not added twice; removing an absent one is a no-op),
so a rebuild can read the head position first and the faces after: whatever commits in between is applied
again harmlessly. A follower whose position has been pruned from the log rebuilds.

A shared store (Milvus, `SearchGallery.shared`) has one writer among all processes: the follower holding
the writer lock (`election`) applies the log to it and records the applied position in the store; the others
only read the log (to switch embedder with everyone) and, after a write of their own, wait until the store
records that position. Whoever takes the role resumes from the store's recorded position, or re-syncs it
from SQL when that position is unknown or pruned. A store that fails (Milvus down) is retried from the same
position, never rebuilt meanwhile: nothing is lost, SQL holds every write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from service.gallery import IndexAudit, SearchGallery
from service.index.milvus import VectorStoreUnavailable
from service.storage import changes
from service.storage import repository as repo
from service.storage.locks import WriterLock
from service.storage.tables import Change

log = logging.getLogger(__name__)

# Changes read per query while catching up.
BATCH = 1000
# How often a process deletes log entries older than the retention (any process may; deletes are idempotent).
PRUNE_EVERY_S = 600.0


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    position: int
    lag_s: float
    error: str | None
    switch_problem: str | None
    # Shared stores: whether this process is their writer; None for a store of this process's own.
    writer: bool | None = None


class ChangeFollower:
    """Keeps `gallery` in step with SQL. `on_switch(tag)` is called when the log says another embedder became
    active; it returns the gallery to follow from then on (rebuilt for that model) or raises to say why it
    cannot, which `switch_problem` then reports while the process serves its current model."""

    def __init__(
        self,
        gallery: SearchGallery,
        sessions: Callable[[], Session],
        *,
        poll_s: float,
        retention_s: float,
        listen: Callable[[float], bool] | None = None,
        on_switch: Callable[[str], SearchGallery] | None = None,
        election: WriterLock | None = None,
    ) -> None:
        self.gallery = gallery
        # Elects the one writer of a shared store (required when the gallery is shared).
        self._election = election
        self._sessions = sessions
        self._poll_s, self._retention_s = poll_s, retention_s
        # Waits up to the given seconds for a NOTIFY; True when one came (PostgreSQL), else polling only.
        self._listen = listen
        self.on_switch = on_switch
        self._apply_lock = threading.RLock()
        self.position = 0
        self._at_head_since = time.monotonic()
        # Why following failed last time (cleared by a successful catch-up); and why a switch of embedder did.
        self.error: str | None = None
        self.switch_problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # --- whole-index work -----------------------------------------------------------------------------

    @property
    def is_writer(self) -> bool:
        """Whether this process writes its gallery's store (always, for a store of its own)."""
        return self.gallery.applies

    def start_up(self) -> int:
        """At start: a store of its own is rebuilt; a shared one is joined (as its writer when the lock is
        free: resumed from its recorded position, or re-synced). Returns the face count."""
        if not self.gallery.shared:
            return self.rebuild()
        self._elect()
        if not self.gallery.applies:
            with self._sessions() as session:
                self.position = changes.head(session)
            self._at_head_since = time.monotonic()
        return self.gallery.face_count()

    def rebuild(self) -> int:
        """Reload the index from SQL and follow from the head read just before; returns the face count."""
        with self._apply_lock:
            with self._sessions() as session:
                head = changes.head(session)
            faces = self.gallery.rebuild()
            self.position = head
            self.gallery.mark_applied(head)
            self._at_head_since = time.monotonic()
            return faces

    def _elect(self) -> None:
        """Shared stores: take the writer role when free, and give it up when the lock is lost."""
        if self._election is None or not self.gallery.shared:
            return
        gallery = self.gallery
        with self._apply_lock:
            if gallery.applies:
                if not self._election.held():
                    gallery.set_writer(False)
                    log.warning("lost the writer lock of the shared vector store; now a reader")
                return
            if not self._election.try_acquire():
                return
            gallery.set_writer(True)
            try:
                self._take_over()
            except Exception:  # e.g. Milvus away: give the role back and try again next round
                gallery.set_writer(False)
                self._election.release()
                raise
            log.info("elected the writer of the shared vector store (at position %d)", self.position)

    def _take_over(self) -> None:
        """Resume from the store's recorded position; re-sync it from SQL when that is unknown or pruned."""
        stored = self.gallery.applied_position()
        with self._sessions() as session:
            pruned = changes.pruned_through(session)
        if stored is None or stored < pruned:
            log.info("shared store at position %s, log pruned through %d: re-syncing it", stored, pruned)
            self.rebuild()
            return
        self.position = stored
        for _ in range(3):  # counted at one log position, unless other processes keep writing
            self.catch_up()
            with self._sessions() as session:
                sql_faces = repo.count_faces(session, model=self.gallery.model_tag)
                if changes.head(session) == self.position:
                    break
        if (held := self.gallery.face_count()) != sql_faces:
            log.info("shared store holds %d faces, SQL %d: re-syncing it", held, sql_faces)
            self.rebuild()

    def catch_up(self) -> int:
        """Apply every change committed so far; returns how many were applied."""
        applied = 0
        with self._apply_lock:
            while True:
                with self._sessions() as session:
                    if changes.pruned_through(session) > self.position:
                        log.warning(
                            "the change log was pruned past position %d; rebuilding the index", self.position
                        )
                        self.rebuild()
                        continue
                    started = time.monotonic()
                    batch = changes.after(session, position=self.position, limit=BATCH)
                    added = [c.face_key for c in batch if c.kind == changes.FACE_ADDED and c.face_key]
                    vectors = (
                        repo.embeddings_of(session, keys=added, model=self.gallery.model_tag)
                        if self.gallery.applies
                        else {}
                    )
                if not batch:
                    self._at_head_since = started
                    return applied
                switch_pending = self._apply(batch, vectors)
                applied += len(batch)
                if switch_pending:
                    return applied

    def after_write(self) -> None:
        """`catch_up` for a request that has just committed: its change is in SQL whatever happens here, so a
        failure to read the log is left to the background thread (and reported there), not to the request."""
        try:
            self.catch_up()
            # A shared store is written by the elected writer, maybe another process: wait for it (bounded).
            if not self.gallery.wait_applied(self.position):
                log.warning(
                    "the shared vector store has not reached this write (position %d) within the wait; it "
                    "is committed and will be applied",
                    self.position,
                )
        except Exception as exc:  # the write is committed; failing its answer would invite a retry
            log.warning("could not apply this process's own write at once: %s", _describe(exc))

    def _apply(self, batch: Sequence[Change], vectors: dict[int, tuple[Any, Any]]) -> bool:
        """Apply one batch; the position moves only once all of its writes reached the store (a store that
        failed midway gets the batch again: applying is idempotent). True when a switch of embedder has to
        wait: the position stays before it, so the next round tries again."""
        gallery = self.gallery
        position, switch_to, before_switch = self.position, None, self.position
        with gallery.writing():
            for change in batch:
                if change.kind == changes.EMBEDDER_SWITCHED:
                    if change.model != gallery.model_tag:
                        before_switch = position
                        position, switch_to = change.id, change.model or ""
                        break  # a new gallery is rebuilt from SQL: what follows is in it already
                elif change.kind not in changes.KINDS:
                    raise ValueError(f"change {change.id} has an unknown kind {change.kind!r}")
                elif not gallery.applies:
                    pass  # a reader of a shared store: its writer applies this
                elif change.kind == changes.FACE_ADDED and change.face_key in vectors:
                    if not gallery.holds(change.face_key):
                        identity_id, vector = vectors[change.face_key]
                        gallery.added(change.face_key, identity_id, vector)
                elif change.kind == changes.FACE_REMOVED and change.face_key is not None:
                    gallery.removed([change.face_key])
                elif change.kind == changes.IDENTITY_REMOVED and change.identity_id is not None:
                    gallery.removed([], identity_id=change.identity_id)
                position = change.id
        self.position = position
        gallery.mark_applied(position)
        if switch_to is not None and not self._switch(switch_to):
            self.position = before_switch
            return True
        return False

    def _switch(self, tag: str) -> bool:
        """Follow the active embedder to `tag`; False when it has to be tried again: the shared store is
        away, or its writer has not filled the new model's collection yet (a reader must not serve a
        collection still being filled). Meanwhile this process serves its current model."""
        if self.on_switch is None:
            self.switch_problem = f"the active embedder is now {tag}; this process cannot switch: restart it"
            return True
        with self._sessions() as session:
            head = changes.head(session)  # read before the new index's rebuild: what follows is applied again
        try:
            self.gallery = self.on_switch(tag)
        except VectorStoreUnavailable as exc:
            self.switch_problem = f"switching to the active embedder {tag} waits for the vector store: {exc}"
            log.warning("%s", self.switch_problem)
            return False
        except Exception as exc:  # reported on /readyz; this process keeps serving its current model
            self.switch_problem = f"cannot switch to the active embedder {tag}: {exc}"
            log.error("%s", self.switch_problem)
            return True
        self.switch_problem = None
        self.position = max(self.position, head)
        self.gallery.mark_applied(self.position)
        log.info("switched to the active embedder %s", tag)
        return True

    def audit(self, attempts: int = 3) -> IndexAudit:
        """The index against SQL at one position: caught up, then compared; again when another process
        committed in between (up to `attempts` times; the last comparison is returned either way)."""
        with self._apply_lock:
            for _ in range(attempts):
                self.catch_up()
                self.gallery.wait_applied(self.position)  # a reader of a shared store: its writer's turn
                audit = self.gallery.audit()
                with self._sessions() as session:
                    if changes.head(session) == self.position:
                        break
            return audit

    # --- the background thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="change-follower", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if (close_listener := getattr(self._listen, "close", None)) is not None:
            close_listener()  # the LISTEN connection (PostgreSQL)
        if self._election is not None:
            self._election.release()  # another replica takes over at once

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._listen is None or not self._listen(self._poll_s):
                self._stop.wait(self._poll_s if self._listen is None else 0)
            if self._stop.is_set():
                return
            try:
                self._elect()
                self.catch_up()
                self._maybe_prune()
                self.error, failures = None, 0
            except Exception as exc:  # the database went away or a log entry is unusable: report, retry
                failures += 1
                self.error = _describe(exc)
                log.warning("following the change log failed (attempt %d): %s", failures, self.error)
                self._stop.wait(min(5.0, self._poll_s * 2**failures))
                # A store that is away is retried from the same position: a rebuild would fail as well.
                if failures >= 2 and not isinstance(exc, VectorStoreUnavailable):
                    self._rebuild_after_failure()

    def _rebuild_after_failure(self) -> None:
        # Why: an entry that cannot be applied would stop this process forever; SQL has the right state.
        try:
            self.rebuild()
        except Exception as exc:  # still failing (the database is away): the next round tries again
            self.error = f"{self.error}; rebuilding from SQL failed too: {_describe(exc)}"
            log.warning("%s", self.error)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        with self._sessions() as session:
            deleted = changes.prune(session, before=datetime.now(UTC) - timedelta(seconds=self._retention_s))
            session.commit()
        if deleted:
            log.info("pruned %d change log entries older than %.0f s", deleted, self._retention_s)

    def status(self) -> FollowerStatus:
        """Where this process stands: the applied position and how long since it was last at the head."""
        return FollowerStatus(
            position=self.position,
            lag_s=max(0.0, time.monotonic() - self._at_head_since),
            error=self.error,
            switch_problem=self.switch_problem,
            writer=self.gallery.applies if self.gallery.shared else None,
        )


def _describe(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"
