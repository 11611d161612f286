"""`facebank models list|use|prune` (and `prepare`, which the `models` package adds: it needs torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.common import EXIT_USAGE, confirm, database, fail
from service.config import Settings


def register(commands: Any) -> Any:
    """Add the `models` group; returns its subparsers, where plugins add more (see service/cli/__init__)."""
    models = commands.add_parser("models", help="prepare and inspect models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser(
        "list", help="models in the manifest with licence and face counts; * marks the active ones"
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
    return models_commands


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    from service.runtime.manifest import PROJECT_MANIFEST, load_manifest

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
    from sqlalchemy.exc import SQLAlchemyError

    from service.storage import make_engine, make_session_factory, service_settings
    from service.storage import repository as repo
    from service.storage.migrate import schema_problem

    unreachable = "not reachable ({}); face counts and the active model unknown"
    try:
        problem = schema_problem(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        return None, None, unreachable.format(type(exc).__name__)
    if problem is not None:
        return None, None, problem
    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    try:
        with make_session_factory(engine)() as session:
            active = service_settings.active_embedder(session)
            counts = repo.models_in_use(session)
    except SQLAlchemyError as exc:
        return None, None, unreachable.format(type(exc).__name__)
    finally:
        engine.dispose()
    if active is None:
        return None, counts, "no active embedder recorded yet (the first start records FACEBANK_EMBEDDER's)"
    return active, counts, f"active embedder {active} (* marks the active models)"


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
        return fail(str(exc))
    tag = entry.tag
    with database(settings) as session:
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
    print(
        "running servers switch to it as they follow the change log; one that cannot (the model is not "
        "prepared on its host) keeps its model and says why on /readyz (changes.switch_problem)"
    )
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
        return fail(
            f"give a model tag name@version, as `facebank models list` shows; not {model!r}", EXIT_USAGE
        )
    with database(settings) as session:
        try:
            active, _ = recorded_embedder(settings, session)
        except ModelLoadError as exc:
            return fail(f"cannot tell the active embedder: {exc}")
        if model == active:
            return fail(f"{model} is the active embedder; switch first (`facebank models use NAME`)")
        keys = repo.face_keys_of_model(session, model=model)
        if not keys:
            known = ", ".join(repo.models_in_use(session)) or "none"
            print(f"no faces of {model} to delete (stored model tags: {known})")
            return _drop_collection(settings, model)
        emptied = integrity.identities_only_with_model(session, model=model)
        question = (
            f"delete {len(keys)} faces of {model} for good ({len(emptied)} identities will have no face "
            f"left; re-enroll them with `facebank ingest`)?"
        )
        if not args.yes and not confirm(question):
            return fail("nothing deleted (give --yes to skip this question)")
        actor = cli_principal()
        removed = integrity.delete_faces(session, keys=keys)
        audit_deletions(session, actor, removed, reason=f"models prune: {model}"[:200])
        detail = {"faces": len(removed), "identities_left_without_faces": len(emptied), "active": active}
        record(session, actor, Actions.MODEL_PRUNE, "model", model[:64], detail)
        session.commit()
    # A server still running the old model drops them as it follows the change log.
    print(
        f"deleted {len(removed)} faces of {model}; servers still running {model} drop them from their index "
        "as they follow the change log"
    )
    return _drop_collection(settings, model)


def _drop_collection(settings: Settings, model: str) -> int:
    """FACEBANK_VECTOR_STORE=milvus: drop `model`'s collection, so its vectors leave Milvus too."""
    if settings.vector_store != "milvus":
        return 0
    from service.index.milvus import MilvusTarget, VectorStoreRefused, VectorStoreUnavailable, drop_collection

    try:
        dropped = drop_collection(MilvusTarget.of(settings), model)
    except (VectorStoreRefused, VectorStoreUnavailable) as exc:
        return fail(f"its Milvus collection is not dropped yet ({exc}); run this command again")
    print(f"dropped the Milvus collection of {model}" if dropped else f"no Milvus collection of {model}")
    return 0


def audit_deletions(session: Any, actor: Any, removed: list[Any], *, reason: str) -> None:
    """One face.delete audit event per (key, face id, identity id) that `integrity.delete_faces` removed."""
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
