"""`facebank doctor [--fix]`: check SQL, model versions and the index, and repair what loses nothing.

The index is an in-memory cache each server rebuilds from SQL at start, so it cannot be wrong on disk.
Offline, the doctor rebuilds one the way a server does and compares it with SQL. With --server it also
compares a running server's index with SQL (GET /v1/admin/index), and --fix asks that server to rebuild it
(POST /v1/admin/index/rebuild), which is what a restart would do, without the downtime.

With FACEBANK_VECTOR_STORE=milvus the store outlives processes, so the doctor compares the Milvus collection
of the active model with SQL key by key, and --fix re-syncs it (upserts what is missing, deletes what SQL
lacks) as its writer: it takes the writer lock, so it never writes beside a running server's applier.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.cli.common import EXIT_FAILED, EXIT_USAGE, api_key_of, fail
from service.cli.models import audit_deletions
from service.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from service.security import Principal


def register(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check (and with --fix repair) the database, model versions and the search index"
    )
    doctor.add_argument("--fix", action="store_true", help="apply the repairs that lose nothing usable")
    doctor.add_argument(
        "--drop-other-models",
        action="store_true",
        help="with --fix: delete faces embedded by models other than the active one",
    )
    doctor.add_argument("--server", help="also check a running server's index, e.g. http://127.0.0.1:8000")
    doctor.add_argument("--api-key", help="admin key for --server (default FACEBANK_API_KEY)")
    doctor.set_defaults(handler=_doctor)


class _Report:
    """What `facebank doctor` found: lines for a person, and whether anything is still wrong."""

    def __init__(self) -> None:
        self.problems = 0

    def ok(self, message: str) -> None:
        print(f"ok     {message}")

    def problem(self, message: str) -> None:
        self.problems += 1
        print(f"FAIL   {message}")

    def fixed(self, message: str) -> None:
        self.problems -= 1
        print(f"fixed  {message}")

    def note(self, message: str) -> None:
        print(f"       {message}")


@dataclass(frozen=True, slots=True)
class _Checkup:
    report: _Report
    sessions: Callable[[], Session]
    actor: Principal
    fix: bool
    engine: Engine


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from service.security import cli_principal
    from service.storage import make_engine, make_session_factory

    if args.drop_other_models and not args.fix:
        return fail("--drop-other-models deletes faces; give it together with --fix", EXIT_USAGE)
    report = _Report()
    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        if not _check_schema(report, engine, fix=args.fix):
            return EXIT_FAILED
        checkup = _Checkup(report, make_session_factory(engine), cli_principal(), args.fix, engine)
        active = _check_active_embedder(checkup, settings)
        if active is None:
            return EXIT_FAILED
        tag, dim = active
        _check_other_models(checkup, tag, drop=args.drop_other_models)
        _check_vectors(checkup, tag, dim)
        if settings.vector_store == "milvus":
            _check_milvus(checkup, settings, tag, dim)
        else:
            _check_rebuilt_index(checkup, tag, dim)
        _note_change_log(checkup)
        if args.server:
            _check_server(report, args.server.rstrip("/"), api_key_of(args, settings), fix=args.fix)
    finally:
        engine.dispose()
    print("healthy" if report.problems <= 0 else f"{report.problems} problem(s) remain")
    return 0 if report.problems <= 0 else EXIT_FAILED


def _check_schema(report: _Report, engine: Engine, *, fix: bool) -> bool:
    """True when the schema is (or, with fix, now is) at the newest revision."""
    from service.storage import current_revision, head_revision, upgrade_to_head

    revision, head = current_revision(engine), head_revision()
    if revision == head:
        report.ok(f"database schema at the newest revision ({head})")
        return True
    report.problem(f"database schema at {revision or 'nothing'}, the newest is {head}")
    if not fix:
        report.note("run `facebank doctor --fix` (or start the server) to migrate; stopping here")
        return False
    upgrade_to_head(engine)
    report.fixed(f"migrated the schema to {head}")
    return True


def _check_active_embedder(checkup: _Checkup, settings: Settings) -> tuple[str, int] | None:
    """(tag, dimensions) of the model a server would use: the database's choice, else the one its first
    start records (service/active_model.py: the configured one, or that of the faces it holds unless
    FACEBANK_EMBEDDER is set); None when it cannot be told."""
    from service.active_model import embedder_set_explicitly, seeding_held, unprepared_message
    from service.runtime.manifest import PROJECT_MANIFEST, ManifestError, ModelEntry, load_manifest
    from service.storage import service_settings

    report = checkup.report
    prepared = settings.model_dir / "manifest.toml"
    with checkup.sessions() as session:
        recorded = service_settings.active_embedder(session)
        held = None if recorded else seeding_held(settings, session)
    try:
        manifest = load_manifest(prepared if prepared.is_file() else PROJECT_MANIFEST)
        if recorded is None and held is None and settings.embedder not in manifest.names():
            # The same words serve uses when it refuses to start (service/active_model.py).
            report.problem(unprepared_message(settings, [e.name for e in manifest.embedders()]))
            return None
        entry: ModelEntry | None = (
            manifest.get(settings.embedder)
            if recorded is None and held is None
            else next((e for e in manifest.embedders() if e.tag == (recorded or held)), None)
        )
    except (ManifestError, KeyError, OSError) as exc:
        report.problem(f"cannot tell the active embedder {recorded or settings.embedder!r}: {exc}")
        return None
    if entry is None:
        report.problem(f"the database's active embedder {recorded or held} is not in {settings.model_dir}")
        report.note("prepare or register it there, or switch with `facebank models use NAME`")
        return None
    if entry.embedder is None:
        report.problem(f"{settings.embedder!r} is not an embedder in the manifest")
        return None
    tag, dim = entry.tag, int(entry.embedder.dim)
    source = (
        "recorded in the database"
        if recorded
        else "that of its faces; the first start records it"
        if held
        else "configured; the first start records it"
    )
    report.ok(f"active embedder {tag} ({dim} dimensions; {source})")
    if recorded and embedder_set_explicitly(settings) and settings.embedder != entry.name:
        report.problem(f"FACEBANK_EMBEDDER={settings.embedder} disagrees with it: serving will not start")
        report.note(f"`facebank models use {settings.embedder}` switches; or unset FACEBANK_EMBEDDER")
    return tag, dim


def _check_other_models(checkup: _Checkup, tag: str, *, drop: bool) -> None:
    """Model-version mixing: faces of other models are invisible to search."""
    from service.storage import integrity
    from service.storage import repository as repo

    report = checkup.report
    with checkup.sessions() as session:
        models = repo.models_in_use(session)
        others = {m: n for m, n in models.items() if m != tag}
        report.ok(f"{models.get(tag, 0)} faces embedded with {tag}")
        if not others:
            return
        stranded = integrity.identities_missing_model(session, model=tag)
        listing = ", ".join(f"{n} of {m}" for m, n in others.items())
        report.problem(f"faces of other models, invisible to search: {listing}")
        report.note(
            f"{len(stranded)} identities have no face of {tag} and cannot be found until re-enrolled with it"
        )
        if drop:
            removed = integrity.delete_faces(
                session, keys=integrity.face_keys_of_other_models(session, model=tag)
            )
            audit_deletions(session, checkup.actor, removed, reason="doctor: other embedding model")
            session.commit()
            report.fixed(f"deleted {len(removed)} faces of other models")
        else:
            report.note(
                "re-enroll them (`facebank ingest FOLDER` again), or delete them: "
                + "; ".join(f"`facebank models prune --model {m}`" for m in others)
            )


def _check_vectors(checkup: _Checkup, tag: str, dim: int) -> None:
    """Stored vectors the index cannot take."""
    from service.storage import integrity

    report = checkup.report
    with checkup.sessions() as session:
        unusable = integrity.malformed_face_keys(session, model=tag, dim=dim) + _unusable_vectors(
            session, tag, dim
        )
        if not unusable:
            report.ok(f"every embedding of {tag} has {dim} finite values of unit length")
            return
        report.problem(f"{len(unusable)} faces of {tag} have unusable embeddings (wrong size or values)")
        if checkup.fix:
            removed = integrity.delete_faces(session, keys=unusable)
            audit_deletions(session, checkup.actor, removed, reason="doctor: unusable embedding")
            session.commit()
            report.fixed(f"deleted {len(removed)} faces with unusable embeddings; re-enroll them")


def _unusable_vectors(session: Session, model: str, dim: int) -> list[int]:
    """Keys of vectors with NaN/infinity or far from unit length (the model's output is L2-normalised)."""
    import numpy as np

    from service.storage import integrity
    from service.storage.repository import from_bytes

    bad: list[int] = []
    for key, blob in integrity.iter_vectors(session, model=model, dim=dim):
        vector = from_bytes(blob, dim)
        with np.errstate(all="ignore"):
            if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                bad.append(key)
    return bad


def _check_rebuilt_index(checkup: _Checkup, tag: str, dim: int) -> None:
    """The index a server would build from SQL."""
    from service.gallery import Gallery
    from service.index import make_index
    from service.storage import StorageError

    report = checkup.report
    # Flat whatever FACEBANK_INDEX_TYPE says: the audit compares ids, which every index type holds alike,
    # and a flat rebuild takes seconds where an HNSW graph of the same gallery takes minutes.
    gallery = Gallery(make_index(dim, search_threads=1), checkup.sessions, tag)
    try:
        gallery.rebuild()
        audit = gallery.audit()
    except StorageError as exc:
        report.problem(f"an index cannot be built from SQL: {exc}")
        return
    if audit.in_step:
        report.ok(f"an index rebuilt from SQL holds exactly its {audit.sql_faces} faces")
    else:
        report.problem(f"an index rebuilt from SQL differs from it: {audit}")


def _check_milvus(checkup: _Checkup, settings: Settings, tag: str, dim: int) -> None:
    """The active model's Milvus collection against SQL; with fix, re-synced under the writer lock."""
    from service.gallery import gallery_for
    from service.index.milvus import VectorStoreRefused, VectorStoreUnavailable
    from service.storage import changes
    from service.storage.locks import writer_lock

    report = checkup.report
    try:
        gallery = gallery_for(settings, checkup.sessions, tag, dim)
        audit = gallery.audit()
        position = gallery.applied_position()
    except (VectorStoreRefused, VectorStoreUnavailable) as exc:
        report.problem(f"the Milvus store cannot be checked: {exc}")
        return
    with checkup.sessions() as session:
        head = changes.head(session)
    report.note(f"Milvus collection of {tag} at change log position {position} (log head {head})")
    if audit.in_step:
        report.ok(f"the Milvus collection of {tag} holds exactly its {audit.sql_faces} faces in SQL")
        return
    report.problem(
        f"the Milvus collection of {tag} differs from SQL ({audit.missing_from_index} missing, "
        f"{audit.stale_in_index} stale; e.g. missing {audit.missing_keys[:3]}, stale {audit.stale_keys[:3]})"
    )
    if not checkup.fix:
        report.note("`--fix` re-syncs it from SQL (as a restarted writer does when it takes over)")
        return
    election = writer_lock(checkup.engine)
    if not election.try_acquire():
        report.note(
            "a running server is the Milvus writer: writes in flight may explain the difference; "
            "`facebank doctor --server URL --fix` asks that server to re-sync"
        )
        return
    try:
        gallery.set_writer(True)
        with checkup.sessions() as session:
            head = changes.head(session)  # read first: what commits during the re-sync is applied again
        gallery.rebuild()
        gallery.mark_applied(head)
        after = gallery.audit()
    except VectorStoreUnavailable as exc:
        report.note(f"re-syncing Milvus failed: {exc}")
        return
    finally:
        election.release()
    if after.in_step:
        report.fixed(f"re-synced the Milvus collection of {tag} from SQL ({after.index_faces} faces)")
    else:
        report.note(f"still differs after a re-sync (writes in flight?): {after}")


def _note_change_log(checkup: _Checkup) -> None:
    """Where the change log stands, for comparing with a server's position (`--server`, /readyz)."""
    from service.storage import changes

    with checkup.sessions() as session:
        head, pruned = changes.head(session), changes.pruned_through(session)
    checkup.report.note(f"change log at position {head}; entries up to {pruned} pruned")


def _check_server(report: _Report, server: str, api_key: str | None, *, fix: bool) -> None:
    """A running server's index against SQL; with fix, ask it to rebuild."""
    from service.client import Client, FacebankError

    try:
        with Client(server, api_key=api_key, timeout_s=120.0) as facebank:
            index = facebank.index_report()
            report.note(f"{server}: at change log position {index.log_position}, {index.lag_s:.3f} s behind")
            if index.in_step:
                report.ok(f"{server}: its index holds exactly the {index.sql_faces} faces in SQL")
                return
            report.problem(
                f"{server}: its index differs from SQL ({index.missing_from_index} missing, "
                f"{index.stale_in_index} stale)"
            )
            if not fix:
                report.note("`--fix` asks the server to rebuild its index from SQL (no restart needed)")
                return
            after = facebank.rebuild_index()
            if after.in_step:
                report.fixed(f"{server}: rebuilt its index from SQL ({after.index_faces} faces)")
            else:
                report.note(f"{server}: still differs after a rebuild (writes in flight?): {after}")
    except FacebankError as exc:
        report.problem(f"{server}: {exc}")
