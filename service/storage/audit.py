"""Repository functions for the audit log. Keyword-only; none of them commits.

Write an event in the same transaction as the change it describes, so the log and the data cannot disagree:
either both are committed or neither is.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.storage.tables import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | uuid.UUID | None,
    actor_key_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        actor=actor[:200],
        actor_key_id=actor_key_id,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        detail=detail,
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    *,
    limit: int,
    before_id: int | None = None,
    target_id: str | uuid.UUID | None = None,
    action: str | None = None,
) -> list[AuditEvent]:
    """Newest first; `before_id` pages backwards (pass the smallest id of the previous page)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if target_id is not None:
        query = query.where(AuditEvent.target_id == str(target_id))
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(session.scalars(query.limit(limit)))
