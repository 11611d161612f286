"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import State
from service.storage import repository as repo

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: State) -> JSONResponse:
    checks: dict[str, object] = {"models": True}
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
            sql_faces = repo.count_faces(session, model=state.embedder_tag)
        checks["database"] = True
        checks["index_in_step"] = sql_faces == len(state.gallery.index)
        checks["faces"] = sql_faces
    except Exception as exc:  # any DB failure means not ready, whatever its type
        checks["database"] = False
        checks["error"] = type(exc).__name__
    ready = bool(checks.get("database")) and bool(checks.get("index_in_step"))
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
