"""The audit log: who did what, when. Ids only, never names, metadata, images or embeddings, so that erasing a
person leaves nothing about them behind but the fact that an id existed and was deleted."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from service.security.principal import Principal
from service.storage import audit as audit_repo
from service.storage.tables import AuditEvent

log = logging.getLogger("facebank.audit")


class Actions:
    IDENTITY_CREATE = "identity.create"
    IDENTITY_UPDATE = "identity.update"
    IDENTITY_DELETE = "identity.delete"
    FACE_ENROLL = "face.enroll"
    FACE_DELETE = "face.delete"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    INDEX_REBUILD = "index.rebuild"
    MODEL_USE = "model.use"
    MODEL_PRUNE = "model.prune"


def record(
    session: Session,
    actor: Principal,
    action: str,
    target_type: str,
    target_id: uuid.UUID | str | None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the caller's transaction; it is committed (or rolled back) with the change itself."""
    event = audit_repo.record(
        session,
        actor=actor.label,
        actor_key_id=actor.key_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=detail,
    )
    log.info("%s %s %s by %s", action, target_type, target_id, actor.label)
    return event
