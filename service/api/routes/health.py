"""Liveness and readiness.

Neither waits behind work: /healthz answers on the event loop, and /readyz's SQL runs on threads of its own,
not in the pool that upload routes fill when the service is busy.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import State
from service.api.state import AppState
from service.storage import repository as repo
from service.storage import service_settings

router = APIRouter(tags=["health"])

_threads: anyio.CapacityLimiter | None = None


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    global _threads
    if _threads is None:  # made here: an anyio limiter needs the running event loop
        _threads = anyio.CapacityLimiter(2)
    return await anyio.to_thread.run_sync(_readiness, state, limiter=_threads)


def _readiness(state: AppState) -> JSONResponse:
    """Ready: database reachable and index in step with SQL. Whether this process still runs the database's
    active embedder is reported (`embedder_active`, `restart_needed`) but does not make it unready: after
    `facebank models use` every server would fail at once and identify traffic would stop, while each can
    still answer from its own model's faces until restarted (enrolment is refused meanwhile). Faces of
    other models are counted, never in the index."""
    checks: dict[str, object] = {"models": True}
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
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
