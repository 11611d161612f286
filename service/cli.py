"""The `facebank` command: serve, models, keys, doctor, and the tools that compose the rest."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import Settings
from service.log_setup import configure_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.runtime import LoadedModels
    from service.storage.tables import ApiKey


@contextmanager
def _database(settings: Settings) -> Iterator[Session]:
    """A session on the configured database, migrated to the newest schema first."""
    from service.storage import make_engine, make_session_factory, upgrade_to_head

    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.api import create_app
    from service.security import NO_KEYS_HINT, is_loopback
    from service.storage import keys as key_repo

    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    if not is_loopback(settings.host):
        # The rule: with no API key, serve only on loopback. The app checks again at start.
        with _database(settings) as session:
            if not key_repo.has_active_keys(session):
                print(
                    f"error: refusing to serve on {settings.host}: no API key exists, so anyone who can "
                    f"reach it could use the service; {NO_KEYS_HINT}",
                    file=sys.stderr,
                )
                return 2
    models, problem = _load_for_serving(settings)
    if problem is not None:
        print(f"error: refusing to serve: {problem}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings, models=models),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Inference runs in FastAPI's thread pool; one process keeps one copy of the index.
        workers=1,
    )
    return 0


def _models_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from models.export.prepare import PrepareError, prepare_models

    if not args.source and not args.download:
        print("say where the weights come from: --from DIR or --download", file=sys.stderr)
        return 2
    model_dir = args.model_dir or settings.model_dir
    try:
        prepare_models(model_dir=model_dir, source_dir=args.source, download=args.download)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"models ready in {model_dir}")
    return 0


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    from models.manifest import PROJECT_MANIFEST, load_manifest

    prepared = settings.model_dir / "manifest.toml"
    manifest = load_manifest(prepared if prepared.is_file() else PROJECT_MANIFEST)
    where = prepared if prepared.is_file() else f"{PROJECT_MANIFEST} (not prepared yet)"
    active_tag, counts, database_note = _database_view(settings)
    print(f"manifest: {where}")
    print(f"database: {database_note}")
    for entry in manifest.entries():
        if entry.kind == "embedder":
            active = entry.tag == active_tag if active_tag else entry.name == settings.embedder
        else:
            active = entry.name == settings.detector
        faces = f"{counts.pop(entry.tag, 0)} faces" if counts is not None and entry.kind == "embedder" else ""
        origin = "trained" if entry.trained else ""
        mark = "*" if active else " "
        print(f"{mark} {entry.tag:32} {entry.kind:9} {origin:8} {faces:>12}  {entry.licence}")
    for tag, count in (counts or {}).items():  # faces of models no longer in the folder
        print(f"  {tag:32} {'(not in the model folder)':31} {count:>7} faces")
    return 0


def _database_view(settings: Settings) -> tuple[str | None, dict[str, int] | None, str]:
    """(the active embedder's tag recorded in the database, face counts per model tag, a line for people),
    without migrating or writing anything; (None, None, why) when the database cannot be read."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.storage import (
        current_revision,
        head_revision,
        make_engine,
        make_session_factory,
        service_settings,
    )
    from service.storage import repository as repo

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).expanduser().exists():
        return None, None, f"none yet at {url.database}"
    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        if current_revision(engine) != head_revision():
            return None, None, "not migrated to the newest schema yet (start the server or run doctor --fix)"
        with make_session_factory(engine)() as session:
            active = service_settings.active_embedder(session)
            counts = repo.models_in_use(session)
    except SQLAlchemyError as exc:
        return None, None, f"not reachable ({type(exc).__name__}); face counts and the active model unknown"
    finally:
        engine.dispose()
    if active is None:
        return None, counts, "no active embedder recorded yet (the first start records FACEBANK_EMBEDDER's)"
    return active, counts, f"active embedder {active} (* marks the active models)"


def _load_for_serving(settings: Settings) -> tuple[LoadedModels | None, str | None]:
    """The models the app will run (the database's active embedder, refusing a FACEBANK_EMBEDDER that
    disagrees) and the GPU index check, done before uvicorn: a wrong setting then reads as one line rather
    than a traceback from inside its lifespan. The app checks the embedder again at start; nothing is
    written here."""
    from service.active_model import (
        EmbedderChoiceError,
        available_name,
        configured_tag,
        conflict_message,
        embedder_set_explicitly,
    )
    from service.index import gpu_unavailable_reason
    from service.runtime import ModelLoadError, load_models
    from service.storage import service_settings

    with _database(settings) as session:
        active = service_settings.active_embedder(session)
    try:
        if active is not None and embedder_set_explicitly(settings):
            configured = configured_tag(settings)
            if configured != active:
                return None, conflict_message(settings, configured, active)
        if settings.device == "cuda" and (reason := gpu_unavailable_reason()) is not None:
            return None, f"FACEBANK_DEVICE=cuda but the vector index cannot use a GPU: {reason}"
        embedder = available_name(settings, active) if active else settings.embedder
        models = load_models(
            settings.model_dir,
            detector=settings.detector,
            embedder=embedder,
            device=settings.device,
            threads=settings.intra_op_threads,
            precision=settings.embedder_precision,
        )
    except (ModelLoadError, EmbedderChoiceError) as exc:
        return None, str(exc)
    return models, None


def _models_use(args: argparse.Namespace, settings: Settings) -> int:
    """Check NAME is a usable prepared embedder, record it as active, and say what happens to other faces."""
    from service.active_model import EmbedderChoiceError, ModelLoadError, embedder_set_explicitly
    from service.runtime.models import verify_embedder
    from service.security import Actions, cli_principal, record
    from service.storage import integrity, service_settings
    from service.storage import repository as repo

    model_dir = args.model_dir or settings.model_dir
    try:
        entry = verify_embedder(model_dir, args.name, device="cpu")
    except (ModelLoadError, EmbedderChoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tag = entry.tag
    with _database(settings) as session:
        previous = service_settings.set_active_embedder(session, tag=tag)
        if previous != tag:
            detail = {"from": previous, "to": tag}
            record(session, cli_principal(), Actions.MODEL_USE, "model", tag[:64], detail)
        session.commit()
        counts = repo.models_in_use(session)
        stranded = integrity.identities_missing_model(session, model=tag)
    if previous == tag:
        print(f"{tag} was already the active embedder")
    else:
        print(f"active embedder: {tag} (was {previous or 'not recorded'}); {entry.onnx_file} verified")
    print(f"{counts.get(tag, 0)} stored faces belong to {tag}")
    others = {model: count for model, count in counts.items() if model != tag}
    if others:
        listing = ", ".join(f"{count} of {model}" for model, count in others.items())
        print(
            f"{sum(others.values())} stored faces belong to other models ({listing}): they are never put in "
            f"the index, so {len(stranded)} identities cannot be found until re-enrolled; "
            "`facebank doctor` reports them"
        )
        print("the service keeps no photos, so re-embedding needs them again. Either:")
        print(f"  facebank ingest FOLDER    # the same folder(s) again: each photo is enrolled for {tag}")
        for model in others:
            print(f"  facebank models prune --model {model}    # delete those faces for good")
    print("running servers go on with the model they loaded (their /readyz answers 503): restart them")
    if embedder_set_explicitly(settings) and settings.embedder != entry.name:
        print(
            f"note: FACEBANK_EMBEDDER={settings.embedder} is set here: the service refuses to start until it "
            f"is unset or set to {entry.name}"
        )
    return 0


def _models_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Delete the faces of one embedding model other than the active one (after a confirmation)."""
    from service.active_model import ModelLoadError, recorded_embedder
    from service.security import Actions, cli_principal, record
    from service.storage import integrity
    from service.storage import repository as repo

    model = args.model
    if "@" not in model:
        print(f"error: give a model tag name@version, as `facebank models list` shows; not {model!r}")
        return 2
    with _database(settings) as session:
        try:
            active, _ = recorded_embedder(settings, session)
        except ModelLoadError as exc:
            print(f"error: cannot tell the active embedder: {exc}", file=sys.stderr)
            return 1
        if model == active:
            print(
                f"error: {model} is the active embedder; switch first (`facebank models use NAME`)",
                file=sys.stderr,
            )
            return 1
        keys = integrity.face_keys_of_model(session, model=model)
        if not keys:
            known = ", ".join(repo.models_in_use(session)) or "none"
            print(f"no faces of {model} to delete (stored model tags: {known})")
            return 0
        emptied = integrity.identities_only_with_model(session, model=model)
        question = (
            f"delete {len(keys)} faces of {model} for good ({len(emptied)} identities will have no face "
            f"left; re-enroll them with `facebank ingest`)?"
        )
        if not args.yes and not _confirm(question):
            print("nothing deleted (give --yes to skip this question)", file=sys.stderr)
            return 1
        actor = cli_principal()
        removed = integrity.delete_faces(session, keys=keys)
        _audit_deletions(session, actor, removed, reason=f"models prune: {model}"[:200])
        detail = {"faces": len(removed), "identities_left_without_faces": len(emptied), "active": active}
        record(session, actor, Actions.MODEL_PRUNE, "model", model[:64], detail)
        session.commit()
    # A server started before `models use` still holds these faces in memory until it restarts.
    print(
        f"deleted {len(removed)} faces of {model}; servers restarted since the switch never loaded them, "
        f"but any server still running {model} matches them until it is restarted: restart it now"
    )
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        print(f"{question} [y/N] no answer possible (standard input is not a terminal)", file=sys.stderr)
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from service.security import cli_principal, issue_key, parse_scopes

    try:
        scopes = parse_scopes(args.scope)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _database(settings) as session:
        issued = issue_key(session, name=args.name, scopes=scopes, actor=cli_principal())
        session.commit()
    key = issued.key
    print(f"created key {key.id} {key.name!r} with scope(s) {', '.join(key.scopes)}", file=sys.stderr)
    print("the key is shown this once; store it now (only its hash is kept):", file=sys.stderr)
    print(issued.token)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from service.storage import keys as key_repo

    with _database(settings) as session:
        keys = key_repo.list_keys(session, include_revoked=args.all)
    if not keys:
        print("no API keys", file=sys.stderr)
        return 0
    print(f"{'id':36}  {'prefix':12}  {'scopes':22}  {'created':20}  {'state':8}  name")
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{key.id!s:36}  {key.prefix:12}  {','.join(key.scopes):22}  {created:20}  {state:8}  {key.name}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.security import cli_principal, revoke_key
    from service.storage import keys as key_repo

    with _database(settings) as session:
        found: list[ApiKey] = []
        try:
            by_id = key_repo.get_key(session, key_id=uuid.UUID(args.key))
            found = [by_id] if by_id is not None else []
        except ValueError:  # not an id: a prefix as `keys list` shows it
            if len(args.key) >= 6:
                found = key_repo.find_keys_by_prefix(session, prefix=args.key)
        if len(found) != 1:
            what = "no key matches" if not found else f"{len(found)} keys match"
            print(
                f"error: {what} {args.key!r}; give the id or prefix from `facebank keys list`",
                file=sys.stderr,
            )
            return 1
        key = found[0]
        already = key.revoked_at is not None
        revoke_key(session, key_id=key.id, actor=cli_principal())
        session.commit()
    print(f"key {key.id} ({key.prefix}, {key.name!r}) {'was already' if already else 'is now'} revoked")
    return 0


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


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check SQL, model versions and the index; with --fix, repair what can be repaired without loss.

    The index is an in-memory cache each server rebuilds from SQL at start, so it cannot be wrong on disk.
    Offline, the doctor rebuilds one the way a server does and compares it with SQL. With --server it also
    compares a running server's index with SQL (GET /v1/admin/index), and --fix asks that server to rebuild
    it (POST /v1/admin/index/rebuild), which is what a restart would do, without the downtime.
    """
    from models.manifest import PROJECT_MANIFEST, ManifestError, ModelEntry, load_manifest
    from service.active_model import embedder_set_explicitly
    from service.gallery import Gallery
    from service.index import make_index
    from service.security import cli_principal
    from service.storage import (
        StorageError,
        current_revision,
        head_revision,
        integrity,
        make_engine,
        make_session_factory,
        service_settings,
        upgrade_to_head,
    )
    from service.storage import repository as repo

    report = _Report()
    if args.drop_other_models and not args.fix:
        print("error: --drop-other-models deletes faces; give it together with --fix", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        # 1. The schema.
        revision, head = current_revision(engine), head_revision()
        if revision == head:
            report.ok(f"database schema at the newest revision ({head})")
        else:
            report.problem(f"database schema at {revision or 'nothing'}, the newest is {head}")
            if not args.fix:
                report.note("run `facebank doctor --fix` (or start the server) to migrate; stopping here")
                return 1
            upgrade_to_head(engine)
            report.fixed(f"migrated the schema to {head}")
        sessions = make_session_factory(engine)

        # 2. Which model the server would use: the database's choice, else (fresh) the configured one.
        prepared = settings.model_dir / "manifest.toml"
        with sessions() as session:
            recorded = service_settings.active_embedder(session)
        try:
            manifest = load_manifest(prepared if prepared.is_file() else PROJECT_MANIFEST)
            entry: ModelEntry | None = (
                manifest.get(settings.embedder)
                if recorded is None
                else next((e for e in manifest.embedders() if e.tag == recorded), None)
            )
        except (ManifestError, KeyError, OSError) as exc:
            report.problem(f"cannot tell the active embedder {recorded or settings.embedder!r}: {exc}")
            return 1
        if entry is None:
            report.problem(f"the database's active embedder {recorded} is not in {settings.model_dir}")
            report.note("prepare or register it there, or switch with `facebank models use NAME`")
            return 1
        if entry.embedder is None:
            report.problem(f"{settings.embedder!r} is not an embedder in the manifest")
            return 1
        tag, dim = entry.tag, int(entry.embedder.dim)
        source = "recorded in the database" if recorded else "configured; the first start records it"
        report.ok(f"active embedder {tag} ({dim} dimensions; {source})")
        if recorded and embedder_set_explicitly(settings) and settings.embedder != entry.name:
            report.problem(f"FACEBANK_EMBEDDER={settings.embedder} disagrees with it: serving will not start")
            report.note(f"`facebank models use {settings.embedder}` switches; or unset FACEBANK_EMBEDDER")

        # 3. Model-version mixing: faces of other models are invisible to search.
        actor = cli_principal()
        with sessions() as session:
            models = repo.models_in_use(session)
            others = {m: n for m, n in models.items() if m != tag}
            report.ok(f"{models.get(tag, 0)} faces embedded with {tag}")
            if others:
                stranded = integrity.identities_missing_model(session, model=tag)
                listing = ", ".join(f"{n} of {m}" for m, n in others.items())
                report.problem(f"faces of other models, invisible to search: {listing}")
                report.note(
                    f"{len(stranded)} identities have no face of {tag} and cannot be found until "
                    "re-enrolled with it"
                )
                if args.drop_other_models:
                    removed = integrity.delete_faces(
                        session, keys=integrity.face_keys_of_other_models(session, model=tag)
                    )
                    _audit_deletions(session, actor, removed, reason="doctor: other embedding model")
                    session.commit()
                    report.fixed(f"deleted {len(removed)} faces of other models")
                else:
                    report.note(
                        "re-enroll them (`facebank ingest FOLDER` again), or delete them: "
                        + "; ".join(f"`facebank models prune --model {m}`" for m in others)
                    )

            # 4. Stored vectors the index cannot take.
            malformed = integrity.malformed_face_keys(session, model=tag, dim=dim)
            unusable = malformed + _unusable_vectors(session, tag, dim)
            if unusable:
                report.problem(
                    f"{len(unusable)} faces of {tag} have unusable embeddings (wrong size or values)"
                )
                if args.fix:
                    removed = integrity.delete_faces(session, keys=unusable)
                    _audit_deletions(session, actor, removed, reason="doctor: unusable embedding")
                    session.commit()
                    report.fixed(f"deleted {len(removed)} faces with unusable embeddings; re-enroll them")
            else:
                report.ok(f"every embedding of {tag} has {dim} finite values of unit length")

        # 5. The index a server would build from SQL.
        gallery = Gallery(make_index(dim, search_threads=1), sessions, tag)
        try:
            gallery.rebuild()
            audit = gallery.audit()
        except StorageError as exc:
            report.problem(f"an index cannot be built from SQL: {exc}")
        else:
            if audit.in_step:
                report.ok(f"an index rebuilt from SQL holds exactly its {audit.sql_faces} faces")
            else:
                report.problem(f"an index rebuilt from SQL differs from it: {audit}")

        # 6. A running server's index.
        if args.server:
            _doctor_server(report, args.server.rstrip("/"), args.api_key, fix=args.fix)
    finally:
        engine.dispose()
    print("healthy" if report.problems <= 0 else f"{report.problems} problem(s) remain")
    return 0 if report.problems <= 0 else 1


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


def _audit_deletions(session: Session, actor: Any, removed: list[Any], *, reason: str) -> None:
    from service.security import Actions, record

    for _key, face_id, identity_id in removed:
        record(
            session,
            actor,
            Actions.FACE_DELETE,
            "face",
            face_id,
            {"identity_id": str(identity_id), "reason": reason},
        )


def _doctor_server(report: _Report, server: str, api_key: str | None, *, fix: bool) -> None:
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        with httpx.Client(base_url=server, headers=headers, timeout=120.0) as http:
            response = http.get("/v1/admin/index")
            if response.status_code != 200:
                report.problem(
                    f"{server}: GET /v1/admin/index answered {response.status_code}: {response.text}"
                )
                return
            body = response.json()
            if body["in_step"]:
                report.ok(f"{server}: its index holds exactly the {body['sql_faces']} faces in SQL")
                return
            report.problem(
                f"{server}: its index differs from SQL ({body['missing_from_index']} missing, "
                f"{body['stale_in_index']} stale)"
            )
            if not fix:
                report.note("`--fix` asks the server to rebuild its index from SQL (no restart needed)")
                return
            after = http.post("/v1/admin/index/rebuild").json()
            if after.get("in_step"):
                report.fixed(f"{server}: rebuilt its index from SQL ({after['index_faces']} faces)")
            else:
                report.note(f"{server}: still differs after a rebuild (writes in flight?): {after}")
    except httpx.HTTPError as exc:
        report.problem(f"{server}: cannot reach the server: {exc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the REST API (uvicorn)")
    serve.add_argument("--host", help="bind address (default FACEBANK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FACEBANK_PORT or 8000)")
    serve.set_defaults(handler=_serve)

    models = commands.add_parser("models", help="prepare and inspect models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = models_commands.add_parser("prepare", help="verify upstream weights and export ONNX")
    source = prepare.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", type=Path, help="folder holding the upstream weight files")
    source.add_argument("--download", action="store_true", help="fetch the pinned upstream URLs")
    prepare.add_argument("--model-dir", type=Path, help="output folder (default FACEBANK_MODEL_DIR)")
    prepare.set_defaults(handler=_models_prepare)
    listing = models_commands.add_parser(
        "list", help="models in the manifest with face counts; * marks the active ones"
    )
    listing.set_defaults(handler=_models_list)
    use = models_commands.add_parser(
        "use",
        help="switch the service to a prepared embedder (recorded in the database for every process)",
        description="Check NAME (its ONNX file against its sha256, one run through it), record it in the "
        "database as the active embedder, and report the stored faces of other models. Restart the servers "
        "afterwards.",
    )
    use.add_argument("name", help="embedder name in the prepared manifest, e.g. mobilefacenet")
    use.add_argument("--model-dir", type=Path, help="prepared model folder (default FACEBANK_MODEL_DIR)")
    use.set_defaults(handler=_models_use)
    prune = models_commands.add_parser(
        "prune", help="delete the stored faces of an embedding model other than the active one"
    )
    prune.add_argument("--model", required=True, help="model tag name@version, as `models list` shows")
    prune.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    prune.set_defaults(handler=_models_prune)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="admin, enroll or identify; repeat or separate with commas",
    )
    create.set_defaults(handler=_keys_create)
    key_listing = keys_commands.add_parser("list", help="keys with their prefixes and scopes (never secrets)")
    key_listing.add_argument("--all", action="store_true", help="include revoked keys")
    key_listing.set_defaults(handler=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", help="the key's id, or its prefix as `keys list` shows it")
    revoke.set_defaults(handler=_keys_revoke)

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

    for register in _feature_commands():
        register(commands)
    return parser


def _feature_commands() -> list[Callable[[Any], None]]:
    """Commands that live beside their feature; each module's `register(commands)` must import lightly."""
    from bench.cli import register as register_bench
    from models.evaluation.cli import register as register_eval
    from models.plots.cli import register as register_plots
    from models.training.cli import register as register_train
    from service.identify_cli import register as register_identify
    from service.ingest.cli import register as register_ingest

    return [register_ingest, register_identify, register_eval, register_train, register_plots, register_bench]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    settings = Settings()
    return int(args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())
