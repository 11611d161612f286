"""Embedded mode: ingest straight into the configured database.

Three stages overlap:
- worker threads read, hash, decode, detect, apply the gates and align each photo (Pillow, hashlib and
  onnxruntime release the GIL while they work);
- the calling thread embeds the accepted crops of several photos in one onnxruntime run;
- one writer thread commits those photos in one transaction (one commit and one fsync per batch, not per
  photo: on PostgreSQL a commit costs about 10 ms here), falling back to one transaction per photo, with
  retries, when the batch fails.

Exactly once: a photo is stored whole or not at all, inside a transaction that holds the ingest writers'
lock (SQLite's write lock; a PostgreSQL advisory lock) while it finds or creates the identity, looks for a
face of the same identity, image sha256 and model, and adds the face only if there is none. A run killed at
any point leaves whole photos behind, and the next run skips them; two runs at once cannot both add the same
photo or both create the same identity.

SQL is the source of truth; servers already running on the database see each committed batch by following
its change log (service/follower.py).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import enrolment
from service.active_model import resolve_embedder
from service.config import Settings
from service.ingest.gates import Gates, Verdict, check_blur, pick_face
from service.ingest.progress import StopFlag
from service.ingest.report import (
    ALREADY_INGESTED,
    DATABASE_ERROR,
    EMBEDDER_SWITCHED,
    INTERNAL_ERROR,
    READ_ERROR,
    Outcome,
    Status,
    Tally,
)
from service.ingest.scan import IngestItem
from service.pipeline import FacePipeline, ImageDecodeError, StageTimes, decode_image
from service.pipeline.factory import build_pipeline
from service.schemas import DetectedFace
from service.security import Principal, cli_principal
from service.storage import repository as repo
from service.storage.engine import make_engine, make_session_factory
from service.storage.locks import lock_ingest_writers
from service.storage.migrate import upgrade_to_head

log = logging.getLogger(__name__)

# Attempts for a photo's transaction when the database is briefly unavailable or a race is lost.
STORE_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class RunOptions:
    gates: Gates
    workers: int = 2
    batch_size: int = 16


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the report's meta says about a finished (or stopped) run."""

    model: str
    seconds: float
    stage_seconds: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Accepted:
    item: IngestItem
    sha256: str
    face: DetectedFace
    crop: np.ndarray


class IdentityDirectory:
    """Identity ids by external_id or exact name, loaded once and filled as identities are found or made.

    The rule: a photo with an external_id belongs to the identity with that external_id; one without belongs
    to the oldest identity with exactly that name. Either is created (with the photo's name and external_id)
    when there is none.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], uuid.UUID] = {}
        self._lock = threading.Lock()

    def load(self, session: Session) -> None:
        with self._lock:
            for identity_id, name, external_id in repo.identity_handles(session):
                self._ids.setdefault(("name", name), identity_id)
                if external_id is not None:
                    self._ids[("external_id", external_id)] = identity_id

    def cached(self, item: IngestItem) -> uuid.UUID | None:
        with self._lock:
            return self._ids.get(item.identity_key)

    def find(self, session: Session, item: IngestItem) -> uuid.UUID | None:
        """The identity of `item`: from memory, else from the database (another process may have made it)."""
        known = self.cached(item)
        if known is not None:
            return known
        kind, value = item.identity_key
        if kind == "external_id":
            return repo.find_identity_id(session, external_id=value)
        return repo.find_identity_id(session, name=value)

    def remember(self, item: IngestItem, identity_id: uuid.UUID) -> None:
        with self._lock:
            self._ids.setdefault(item.identity_key, identity_id)

    def forget(self, item: IngestItem) -> None:
        with self._lock:
            self._ids.pop(item.identity_key, None)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where and as whom a run stores: the database, its identities, the embedder's tag, the audit actor."""

    sessions: sessionmaker[Session]
    directory: IdentityDirectory
    model: str
    actor: Principal


def store_faces(to: Destination, batch: Sequence[tuple[_Accepted, np.ndarray]]) -> list[Outcome]:
    """Photos in one transaction, each whole or not at all: its identity if new, then its face unless this
    image is already in for that identity and model; audited like the API's. Raises (and stores nothing) if
    any of them fails, :class:`enrolment.EmbedderSwitched` when `model` is no longer the active one."""
    outcomes: list[Outcome] = []
    resolved: dict[tuple[str, str], uuid.UUID] = {}
    with to.sessions() as session:
        lock_ingest_writers(session)
        with enrolment.begin(session, model=to.model, actor=to.actor) as unit:
            for accepted, _ in batch:
                key = accepted.item.identity_key
                if key not in resolved and (known := to.directory.find(session, accepted.item)) is not None:
                    resolved[key] = known
            present = repo.images_already_in(
                session, model=to.model, image_sha256s=(accepted.sha256 for accepted, _ in batch)
            )
            for accepted, embedding in batch:
                item = accepted.item
                identity_id = resolved.get(item.identity_key)
                if identity_id is None:
                    identity_id = unit.create_identity(name=item.name, external_id=item.external_id).id
                    resolved[item.identity_key] = identity_id
                elif (identity_id, accepted.sha256) in present:
                    outcomes.append(Outcome.of(item, Status.SKIPPED, ALREADY_INGESTED))
                    continue
                unit.add_face(identity_id, accepted.face, embedding, image_sha256=accepted.sha256)
                present.add((identity_id, accepted.sha256))
                outcomes.append(Outcome.of(item, Status.INGESTED))
    for accepted, _ in batch:
        to.directory.remember(accepted.item, resolved[accepted.item.identity_key])
    return outcomes


def _store_batch(to: Destination, batch: Sequence[tuple[_Accepted, np.ndarray]]) -> list[Outcome]:
    """The batch in one transaction (one commit, one fsync); if that fails, photo by photo with retries."""
    try:
        return store_faces(to, batch)
    except (SQLAlchemyError, repo.Conflict) as exc:
        log.debug("storing a batch of %d failed (%s); storing one by one", len(batch), _first_line(exc))
    return [_store_with_retries(to, accepted, embedding) for accepted, embedding in batch]


def _store_with_retries(to: Destination, accepted: _Accepted, embedding: np.ndarray) -> Outcome:
    last: Exception | None = None
    for attempt in range(STORE_ATTEMPTS):
        try:
            (outcome,) = store_faces(to, [(accepted, embedding)])
            return outcome
        except (repo.Conflict, IntegrityError) as exc:
            # Someone else made the external_id meanwhile, or deleted the identity we remembered: look again.
            to.directory.forget(accepted.item)
            last = exc
        except OperationalError as exc:
            # The database was locked past its busy timeout or the connection dropped: wait and try again.
            last = exc
            time.sleep(0.5 * 2**attempt)
        except SQLAlchemyError as exc:
            last = exc
            break
    log.warning("could not store %s: %s", accepted.item.path, last)
    return Outcome.of(accepted.item, Status.ERROR, DATABASE_ERROR, _first_line(last))


def _first_line(exc: BaseException | None) -> str:
    text_ = str(exc).strip().splitlines() if exc is not None else []
    return text_[0] if text_ else type(exc).__name__


class _StageClock:
    """Thread-seconds per stage, summed over all threads (for the benchmark figures)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def merge(self, times: StageTimes) -> None:
        with self._lock:
            for name, value in times.seconds.items():
                self.seconds[name] = self.seconds.get(name, 0.0) + value


class _Writer(threading.Thread):
    """Commits each embedded batch; outcomes go to the tally as they land."""

    def __init__(self, to: Destination, tally: Tally, clock: _StageClock) -> None:
        # Why daemon: a process aborted while this commits (Ctrl-C again) exits; the transaction rolls back.
        super().__init__(name="ingest-writer", daemon=True)
        self._queue: queue.Queue[tuple[list[_Accepted], np.ndarray] | None] = queue.Queue(maxsize=4)
        self._to, self._tally, self._clock = to, tally, clock

    def put(self, batch: list[_Accepted], embeddings: np.ndarray) -> None:
        self._queue.put((batch, embeddings))

    def close(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        while (work := self._queue.get()) is not None:
            batch, embeddings = work
            times = StageTimes()
            with times.stage("store"):
                try:
                    outcomes = _store_batch(self._to, list(zip(batch, embeddings, strict=True)))
                except enrolment.EmbedderSwitched as exc:
                    reason = (
                        f"the active embedder changed to {exc.active} during this ingest (it embeds with "
                        f"{exc.model}); nothing more is stored: run the ingest again to enroll the rest with "
                        "the new model"
                    )
                    outcomes = [Outcome.of(a.item, Status.ERROR, EMBEDDER_SWITCHED, reason) for a in batch]
                except Exception as exc:  # a bug must not end the run; the photos are reported as errors
                    log.exception("storing a batch failed")
                    outcomes = [
                        Outcome.of(accepted.item, Status.ERROR, INTERNAL_ERROR, _first_line(exc))
                        for accepted in batch
                    ]
            for outcome in outcomes:
                self._tally.add(outcome)
            self._clock.merge(times)


class _Preparer:
    """Worker-thread half: read, hash, skip if already in, decode, detect, gate, align."""

    def __init__(
        self,
        pipeline: FacePipeline,
        settings: Settings,
        gates: Gates,
        sessions: sessionmaker[Session],
        directory: IdentityDirectory,
        model: str,
        clock: _StageClock,
    ) -> None:
        self._pipeline, self._settings, self._gates = pipeline, settings, gates
        self._sessions, self._directory, self._model = sessions, directory, model
        self._clock = clock

    def __call__(self, item: IngestItem) -> _Accepted | Outcome:
        times = StageTimes()
        try:
            return self._prepare(item, times)
        except Exception as exc:  # one photo must not end the run
            log.exception("processing %s failed", item.path)
            return Outcome.of(item, Status.ERROR, INTERNAL_ERROR, _first_line(exc))
        finally:
            self._clock.merge(times)

    def _prepare(self, item: IngestItem, times: StageTimes) -> _Accepted | Outcome:
        with times.stage("read"):
            try:
                data = item.path.read_bytes()
            except OSError as exc:
                return Outcome.of(item, Status.ERROR, READ_ERROR, exc.strerror or _first_line(exc))
            sha256 = hashlib.sha256(data).hexdigest()
        if self._already_ingested(item, sha256, times):
            return Outcome.of(item, Status.SKIPPED, ALREADY_INGESTED)
        try:
            with times.stage("decode"):
                image = decode_image(data, max_pixels=self._settings.max_image_pixels)
        except ImageDecodeError as exc:
            return Outcome.of(item, Status.REJECTED, exc.code, exc.message)
        choice = pick_face(
            self._pipeline.detect(image, times), self._gates, max_faces=self._settings.max_faces
        )
        if isinstance(choice, Verdict):
            return Outcome.of(item, Status.REJECTED, choice.reason, choice.detail)
        crop = self._pipeline.align(image, [choice], times)[0]
        if (verdict := check_blur(crop, self._gates)) is not None:
            return Outcome.of(item, Status.REJECTED, verdict.reason, verdict.detail)
        return _Accepted(item, sha256, choice, crop)

    def _already_ingested(self, item: IngestItem, sha256: str, times: StageTimes) -> bool:
        """Cheap early skip for a resumed run; the writer checks again under the lock."""
        identity_id = self._directory.cached(item)
        if identity_id is None:
            return False
        with times.stage("check"), self._sessions() as session:
            found = repo.find_face_by_image(
                session, identity_id=identity_id, image_sha256=sha256, model=self._model
            )
            return found is not None


def run_embedded(
    items: Sequence[IngestItem],
    *,
    settings: Settings,
    options: RunOptions,
    tally: Tally,
    stop: StopFlag,
) -> RunInfo:
    """Ingest `items` into settings' database; outcomes go to `tally`. Returns once all is committed."""
    started = time.perf_counter()
    engine = make_engine(settings.resolved_database_url, pool_size=options.workers + 2)
    clock = _StageClock()
    try:
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        # The database says which embedder to use, as it does for the servers (service/active_model.py).
        pipeline, models = build_pipeline(resolve_embedder(settings, sessions))
        model = models.embedder_tag
        directory = IdentityDirectory()
        with sessions() as session:
            directory.load(session)
        prepare = _Preparer(pipeline, settings, options.gates, sessions, directory, model, clock)
        writer = _Writer(Destination(sessions, directory, model, cli_principal()), tally, clock)
        writer.start()
        try:
            _feed(items, prepare, pipeline, writer, options, tally, stop, clock)
        finally:
            # Stopped or failing, what was already embedded is committed before we return.
            writer.close()
            writer.join()
    finally:
        engine.dispose()
    return RunInfo(model=model, seconds=time.perf_counter() - started, stage_seconds=dict(clock.seconds))


def _feed(
    items: Iterable[IngestItem],
    prepare: _Preparer,
    pipeline: FacePipeline,
    writer: _Writer,
    options: RunOptions,
    tally: Tally,
    stop: StopFlag,
    clock: _StageClock,
) -> None:
    """Keep the workers busy a bounded distance ahead; embed accepted crops in batches; hand them on."""
    remaining = iter(items)
    # Why bounded: decoded photos wait in memory until embedded; this keeps a few batches' worth at most.
    ahead = options.workers * 2 + options.batch_size
    batch: list[_Accepted] = []

    def flush() -> None:
        times = StageTimes()
        with times.stage("embed"):
            embeddings = pipeline.embedder.embed(np.stack([a.crop for a in batch]))
        clock.merge(times)
        writer.put(list(batch), embeddings)
        batch.clear()

    with ThreadPoolExecutor(options.workers, thread_name_prefix="ingest-worker") as pool:
        pending: deque[Future[_Accepted | Outcome]] = deque()

        def fill() -> None:
            while len(pending) < ahead and not stop:
                item = next(remaining, None)
                if item is None:
                    return
                pending.append(pool.submit(prepare, item))

        fill()
        try:
            while pending and not stop:
                result = pending.popleft().result()
                fill()
                if isinstance(result, Outcome):
                    tally.add(result)
                    continue
                batch.append(result)
                if len(batch) >= options.batch_size:
                    flush()
            # Photos already detected and aligned are in flight too: embed and commit them.
            if batch:
                flush()
        finally:
            for future in pending:
                future.cancel()
