"""Which embedder the service runs: the database's choice, so every process on one database agrees.

The rule:
- a fresh database (no choice recorded) records the configured embedder (``FACEBANK_EMBEDDER``, default
  :data:`~service.config.DEFAULT_EMBEDDER`) as ``name@version`` on the first start, ingest or ``models use``;
  if that embedder is not prepared, nothing starts and the message names a prepared one to set instead;
- one with no choice recorded that already holds faces (made before migration 0003 added the record, by the
  default of its time) records the model of most of its faces instead, unless ``FACEBANK_EMBEDDER`` is set;
- after that the database's choice wins; ``facebank models use NAME`` is the only way to change it (so a new
  default reaches only fresh databases: one that recorded ``mobilefacenet@1`` keeps serving it);
- if ``FACEBANK_EMBEDDER`` is set explicitly and names another model (or another version of it), nothing
  starts: the message names both and the command that switches.

Faces of other models stay in SQL, never in the index (the gallery loads only the active model's vectors);
``facebank doctor`` flags them and ``facebank models prune`` deletes them.

Usage::

    settings = resolve_embedder(settings, sessions)   # settings.embedder is now the database's choice
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.runtime.models import ModelLoadError, prepared_entry, prepared_manifest
from service.storage import repository, service_settings


class EmbedderChoiceError(RuntimeError):
    """The service cannot tell which embedder to run; the message says what to do."""


class EmbedderConflict(EmbedderChoiceError):
    """FACEBANK_EMBEDDER was set explicitly and disagrees with the database's active embedder."""


class ActiveEmbedderUnavailable(EmbedderChoiceError):
    """The database's active embedder is not prepared in the model folder."""


def embedder_set_explicitly(settings: Settings) -> bool:
    """True when the embedder was given (FACEBANK_EMBEDDER or a constructor argument), not defaulted."""
    return "embedder" in settings.model_fields_set


def configured_tag(settings: Settings) -> str:
    """``name@version`` of the configured embedder in the prepared model folder; :class:`ModelLoadError`
    naming what to prepare or set when it is not there (e.g. after ``models prepare --only``)."""
    manifest = prepared_manifest(settings.model_dir)
    if settings.embedder in manifest.names():
        return prepared_entry(settings.model_dir, settings.embedder).tag
    raise ModelLoadError(unprepared_message(settings, [entry.name for entry in manifest.embedders()]))


def unprepared_message(settings: Settings, prepared: list[str]) -> str:
    """Why the configured embedder cannot seed a fresh database, and the two ways out."""
    what = (
        f"FACEBANK_EMBEDDER={settings.embedder}"
        if embedder_set_explicitly(settings)
        else f"the default embedder {settings.embedder}"
    )
    message = (
        f"{what} is not prepared in {settings.model_dir} (its embedders: {', '.join(prepared) or 'none'}); "
        f"prepare it with `facebank models prepare --from DIR` (or `--download`)"
    )
    if prepared:
        message += f", or on a fresh database set a prepared one: FACEBANK_EMBEDDER={prepared[0]}"
    return message


def split_tag(tag: str) -> tuple[str, str]:
    name, _, version = tag.rpartition("@")
    return (name, version) if name else (tag, "")


def conflict_message(settings: Settings, configured: str, active: str) -> str:
    active_name = split_tag(active)[0]
    return (
        f"FACEBANK_EMBEDDER={settings.embedder} ({configured}) disagrees with the database's active embedder "
        f"{active}; the database decides, so that every process on it runs the same model. To switch to "
        f"{settings.embedder}, run `facebank models use {settings.embedder}`; to keep {active}, unset "
        f"FACEBANK_EMBEDDER (or set it to {active_name})"
    )


def resolve_embedder(
    settings: Settings, sessions: sessionmaker[Session], *, loaded_tag: str | None = None
) -> Settings:
    """``settings`` with ``embedder`` set to the database's active embedder, recording :func:`seeding_tag` in
    a database with no choice yet (committed). ``loaded_tag``: models already loaded by the caller, which
    count as an explicit choice. Raises :class:`EmbedderConflict`, :class:`ActiveEmbedderUnavailable` or
    :class:`~service.runtime.ModelLoadError`."""
    with sessions() as session:
        active = service_settings.active_embedder(session)
        if active is None:
            active = service_settings.seed_active_embedder(
                session, tag=loaded_tag or seeding_tag(settings, session)
            )
            session.commit()
    if loaded_tag is not None or embedder_set_explicitly(settings):
        configured = loaded_tag or configured_tag(settings)
        if active != configured:
            raise EmbedderConflict(conflict_message(settings, configured, active))
    if loaded_tag is not None:
        return settings.model_copy(update={"embedder": split_tag(loaded_tag)[0]})
    return settings.model_copy(update={"embedder": available_name(settings, active)})


def seeding_tag(settings: Settings, session: Session) -> str:
    """The tag a database with no recorded choice records: the configured embedder if set explicitly, else
    the model of most of the faces it already holds, else (a fresh database) the configured default."""
    return seeding_held(settings, session) or configured_tag(settings)


def seeding_held(settings: Settings, session: Session) -> str | None:
    """The held model a database with no recorded choice records (`seeding_tag`), or None when the
    configured embedder decides instead."""
    return None if embedder_set_explicitly(settings) else held_model(session)


def held_model(session: Session) -> str | None:
    """The model tag of most of the stored faces (ties: the first by name); None when there are none."""
    counts = repository.models_in_use(session)
    return max(sorted(counts), key=counts.__getitem__) if counts else None


def available_name(settings: Settings, active: str) -> str:
    """The manifest name of the tag ``active`` if that exact version is prepared in the model folder."""
    manifest = prepared_manifest(settings.model_dir)
    for entry in manifest.embedders():
        if entry.tag == active:
            return entry.name
    prepared = ", ".join(entry.tag for entry in manifest.embedders()) or "none"
    raise ActiveEmbedderUnavailable(
        f"the database's active embedder {active} is not prepared in {settings.model_dir} (it has: "
        f"{prepared}); prepare or register it there, or switch with `facebank models use NAME`"
    )


def recorded_embedder(settings: Settings, session: Session) -> tuple[str, bool]:
    """(the active embedder's tag, whether the database records it) without writing anything: the one it
    would record (:func:`seeding_tag`) while none is recorded. For read-only tools such as `models list`."""
    active = service_settings.active_embedder(session)
    if active is not None:
        return active, True
    return seeding_tag(settings, session), False


__all__ = [
    "ActiveEmbedderUnavailable",
    "EmbedderChoiceError",
    "EmbedderConflict",
    "ModelLoadError",
    "available_name",
    "configured_tag",
    "conflict_message",
    "embedder_set_explicitly",
    "held_model",
    "recorded_embedder",
    "resolve_embedder",
    "seeding_held",
    "seeding_tag",
    "split_tag",
    "unprepared_message",
]
