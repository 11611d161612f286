"""Every process follows SQL: its index is rebuilt from SQL at start and then kept in step by applying the
change log (service/storage/changes.py) in order, from one background thread per process.

A process's own writes take the same way in: after committing, a request calls :meth:`catch_up`, which
applies everything up to the head, its own change included (read-your-writes on the replica that took the
write). Other processes see it at their next poll, or at once on PostgreSQL, whose NOTIFY wakes them.

Applying is idempotent (a face already in the index is not added twice; removing an absent one is a no-op),
so a rebuild can read the head position first and the faces after: whatever commits in between is applied
again harmlessly. A follower whose position has been pruned from the log rebuilds.
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

from service.gallery import Gallery, IndexAudit
from service.storage import changes
from service.storage import repository as repo
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


class ChangeFollower:
    """Keeps `gallery` in step with SQL. `on_switch(tag)` is called when the log says another embedder became
    active; it returns the gallery to follow from then on (rebuilt for that model) or raises to say why it
    cannot, which `switch_problem` then reports while the process serves its current model."""

    def __init__(
        self,
        gallery: Gallery,
        sessions: Callable[[], Session],
        *,
        poll_s: float,
        retention_s: float,
        listen: Callable[[float], bool] | None = None,
        on_switch: Callable[[str], Gallery] | None = None,
    ) -> None:
        self.gallery = gallery
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

    def rebuild(self) -> int:
        """Reload the index from SQL and follow from the head read just before; returns the face count."""
        with self._apply_lock:
            with self._sessions() as session:
                head = changes.head(session)
            faces = self.gallery.rebuild()
            self.position = head
            self._at_head_since = time.monotonic()
            return faces

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
                    vectors = repo.embeddings_of(
                        session,
                        keys=[c.face_key for c in batch if c.kind == changes.FACE_ADDED and c.face_key],
                        model=self.gallery.model_tag,
                    )
                if not batch:
                    self._at_head_since = started
                    return applied
                self._apply(batch, vectors)
                applied += len(batch)

    def after_write(self) -> None:
        """`catch_up` for a request that has just committed: its change is in SQL whatever happens here, so a
        failure to read the log is left to the background thread (and reported there), not to the request."""
        try:
            self.catch_up()
        except Exception as exc:  # the write is committed; failing its answer would invite a retry
            log.warning("could not apply this process's own write at once: %s", _describe(exc))

    def _apply(self, batch: Sequence[Change], vectors: dict[int, tuple[Any, Any]]) -> None:
        gallery = self.gallery
        with gallery.writing():
            for change in batch:
                if change.kind == changes.FACE_ADDED and change.face_key in vectors:
                    if not gallery.holds(change.face_key):
                        identity_id, vector = vectors[change.face_key]
                        gallery.added(change.face_key, identity_id, vector)
                elif change.kind == changes.FACE_REMOVED and change.face_key is not None:
                    gallery.removed([change.face_key])
                elif change.kind == changes.IDENTITY_REMOVED and change.identity_id is not None:
                    gallery.removed([], identity_id=change.identity_id)
                elif change.kind == changes.EMBEDDER_SWITCHED:
                    if change.model != gallery.model_tag:
                        self.position = change.id
                        self._switch(change.model or "")
                        return  # a new gallery was rebuilt from SQL: what followed is in it already
                elif change.kind not in changes.KINDS:
                    raise ValueError(f"change {change.id} has an unknown kind {change.kind!r}")
                self.position = change.id

    def _switch(self, tag: str) -> None:
        if self.on_switch is None:
            self.switch_problem = f"the active embedder is now {tag}; this process cannot switch: restart it"
            return
        with self._sessions() as session:
            head = changes.head(session)  # read before the new index's rebuild: what follows is applied again
        try:
            self.gallery = self.on_switch(tag)
        except Exception as exc:  # reported on /readyz; this process keeps serving its current model
            self.switch_problem = f"cannot switch to the active embedder {tag}: {exc}"
            log.error("%s", self.switch_problem)
            return
        self.switch_problem = None
        self.position = max(self.position, head)
        log.info("switched to the active embedder %s", tag)

    def audit(self, attempts: int = 3) -> IndexAudit:
        """The index against SQL at one position: caught up, then compared; again when another process
        committed in between (up to `attempts` times; the last comparison is returned either way)."""
        with self._apply_lock:
            for _ in range(attempts):
                self.catch_up()
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

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._listen is None or not self._listen(self._poll_s):
                self._stop.wait(self._poll_s if self._listen is None else 0)
            if self._stop.is_set():
                return
            try:
                self.catch_up()
                self._maybe_prune()
                self.error, failures = None, 0
            except Exception as exc:  # the database went away or a log entry is unusable: report, retry
                failures += 1
                self.error = _describe(exc)
                log.warning("following the change log failed (attempt %d): %s", failures, self.error)
                self._stop.wait(min(5.0, self._poll_s * 2**failures))
                if failures >= 2:
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
        )


def _describe(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"
