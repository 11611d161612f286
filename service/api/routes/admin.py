"""/v1/keys, /v1/audit, /v1/admin/index: key management, the audit log, the index check (`admin` scope)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Response

from service.api import schemas
from service.api.auth import Admin
from service.api.deps import DB, State
from service.api.errors import not_found
from service.api.state import AppState
from service.security import Actions, Scope, issue_key, record, revoke_key
from service.storage import audit as audit_repo
from service.storage import keys as key_repo
from service.storage import repository as repo
from service.storage.tables import ApiKey

router = APIRouter(tags=["admin"])

ERRORS = schemas.error_responses(*schemas.AUTH_ERRORS, 404, 422)
WRITE_ERRORS = schemas.error_responses(*schemas.AUTH_ERRORS, *schemas.BODY_ERRORS)


def _key_out(key: ApiKey) -> schemas.ApiKeyOut:
    return schemas.ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        created_by=key.created_by,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


@router.get("/v1/keys", response_model=schemas.ApiKeyList, responses=ERRORS)
def list_keys(db: DB, _: Admin, include_revoked: bool = Query(default=False)) -> schemas.ApiKeyList:
    return schemas.ApiKeyList(
        items=[_key_out(k) for k in key_repo.list_keys(db, include_revoked=include_revoked)]
    )


@router.post("/v1/keys", status_code=201, response_model=schemas.ApiKeyCreated, responses=WRITE_ERRORS)
def create_key(body: schemas.KeyCreate, db: DB, caller: Admin) -> schemas.ApiKeyCreated:
    """Create a key. Its secret is in this response only: it is stored as a hash and cannot be shown again."""
    issued = issue_key(db, name=body.name, scopes=[Scope(s) for s in body.scopes], actor=caller)
    db.commit()
    return schemas.ApiKeyCreated(**_key_out(issued.key).model_dump(), key=issued.token)


@router.delete("/v1/keys/{key_id}", status_code=204, responses=ERRORS)
def delete_key(key_id: uuid.UUID, db: DB, caller: Admin) -> Response:
    """Revoke a key: it stops working at once. Revoking a revoked key changes nothing."""
    if revoke_key(db, key_id=key_id, actor=caller) is None:
        raise not_found("API key")
    db.commit()
    return Response(status_code=204)


@router.get("/v1/audit", response_model=schemas.AuditPage, responses=ERRORS)
def list_audit_events(
    db: DB,
    _: Admin,
    limit: int = Query(default=100, ge=1, le=1000),
    before: int | None = Query(default=None, ge=1, le=2**62),
    target_id: str | None = Query(default=None, max_length=64, pattern=r"^[A-Za-z0-9@._:-]+$"),
    action: str | None = Query(default=None, max_length=64, pattern=r"^[a-z._]+$"),
) -> schemas.AuditPage:
    """Audit events newest first; `before` (an event id) pages towards older ones."""
    events = audit_repo.list_events(db, limit=limit, before_id=before, target_id=target_id, action=action)
    return schemas.AuditPage(
        items=[
            schemas.AuditEventOut(
                id=e.id,
                at=e.at,
                actor=e.actor,
                actor_key_id=e.actor_key_id,
                action=e.action,
                target_type=e.target_type,
                target_id=e.target_id,
                detail=e.detail,
            )
            for e in events
        ],
        next_before=events[-1].id if len(events) == limit else None,
    )


def _index_report(state: AppState) -> schemas.IndexReport:
    audit = state.follower.audit()
    following = state.follower.status()
    with state.sessions() as session:
        models = repo.models_in_use(session)
    return schemas.IndexReport(
        model=state.serving.embedder_tag,
        sql_faces=audit.sql_faces,
        index_faces=audit.index_faces,
        missing_from_index=audit.missing_from_index,
        stale_in_index=audit.stale_in_index,
        in_step=audit.in_step,
        other_models={m: n for m, n in models.items() if m != state.serving.embedder_tag},
        log_position=following.position,
        lag_s=round(following.lag_s, 3),
    )


@router.get("/v1/admin/index", response_model=schemas.IndexReport, responses=ERRORS)
def check_index(state: State, _: Admin) -> schemas.IndexReport:
    """Compare every key in the in-memory index with SQL, and count faces of other embedding models."""
    return _index_report(state)


@router.post("/v1/admin/index/rebuild", response_model=schemas.IndexReport, responses=ERRORS)
def rebuild_index(state: State, db: DB, caller: Admin) -> schemas.IndexReport:
    """Reload the in-memory index from SQL (what a restart does), then report as GET does."""
    faces = state.follower.rebuild()
    record(db, caller, Actions.INDEX_REBUILD, "index", state.serving.embedder_tag, {"faces": faces})
    db.commit()
    return _index_report(state)
