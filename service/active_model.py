"""Which embedder the service runs: the database's choice, so every process on one database agrees.

The rule:
- a fresh database (no choice recorded) records the configured embedder (``FACEBANK_EMBEDDER``, default
  ``mobilefacenet``) as ``name@version`` on the first start, ingest or ``models use``;
- after that the database's choice wins; ``facebank models use NAME`` is the only way to change it;
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
from service.storage import service_settings


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
    """``name@version`` of the configured embedder in the prepared model folder."""
    return prepared_entry(settings.model_dir, settings.embedder).tag


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
    """``settings`` with ``embedder`` set to the database's active embedder, recording the configured one
    in a fresh database (committed). ``loaded_tag``: models already loaded by the caller, which count as an
    explicit choice. Raises :class:`EmbedderConflict`, :class:`ActiveEmbedderUnavailable` or
    :class:`~service.runtime.ModelLoadError`."""
    with sessions() as session:
        active = service_settings.active_embedder(session)
        if active is None:
            active = service_settings.seed_active_embedder(
                session, tag=loaded_tag or configured_tag(settings)
            )
            session.commit()
    if loaded_tag is not None or embedder_set_explicitly(settings):
        configured = loaded_tag or configured_tag(settings)
        if active != configured:
            raise EmbedderConflict(conflict_message(settings, configured, active))
    if loaded_tag is not None:
        return settings.model_copy(update={"embedder": split_tag(loaded_tag)[0]})
    return settings.model_copy(update={"embedder": available_name(settings, active)})


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
    """(the active embedder's tag, whether the database records it) without writing anything: the
    configured one while none is recorded. For read-only tools such as `facebank doctor`."""
    active = service_settings.active_embedder(session)
    if active is not None:
        return active, True
    return configured_tag(settings), False


__all__ = [
    "ActiveEmbedderUnavailable",
    "EmbedderChoiceError",
    "EmbedderConflict",
    "ModelLoadError",
    "available_name",
    "configured_tag",
    "conflict_message",
    "embedder_set_explicitly",
    "recorded_embedder",
    "resolve_embedder",
    "split_tag",
]
