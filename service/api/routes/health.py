"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import State
from service.storage import repository as repo
from service.storage import service_settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: State) -> JSONResponse:
    """Ready: database reachable and index in step with SQL. Whether this process still runs the database's
    active embedder is reported (`embedder_active`, `restart_needed`) but does not make it unready: after
    `facebank models use` every server would fail at once and identify traffic would stop, while each can
    still answer from its own model's faces until restarted (enrolment is refused meanwhile). Faces of
    other models are counted, never in the index."""
    checks: dict[str, object] = {"models": True}
    try:
        with state.sessions() as session:
            sql_faces = repo.count_faces(session, model=state.embedder_tag)
            all_faces = repo.count_faces(session)
            switched_to = service_settings.switched_away_from(session, state.embedder_tag)
        checks["database"] = True
        checks["index_in_step"] = sql_faces == len(state.gallery.index)
        checks["faces"] = sql_faces
        checks["embedder"] = state.embedder_tag
        checks["embedder_active"] = switched_to is None
        checks["restart_needed"] = switched_to is not None
        checks["other_model_faces"] = all_faces - sql_faces
    except Exception as exc:  # any DB failure means not ready, whatever its type
        checks["database"] = False
        checks["error"] = type(exc).__name__
    ready = all(bool(checks.get(name)) for name in ("database", "index_in_step"))
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
