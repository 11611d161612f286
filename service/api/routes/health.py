"""Liveness and readiness.

Neither waits behind work: /healthz answers on the event loop, and /readyz's SQL runs on threads of its own,
not in the pool that upload routes fill when the service is busy.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import State
from service.api.state import AppState
from service.storage import repository as repo
from service.storage import service_settings

router = APIRouter(tags=["health"])

@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    if state.readiness_threads is None:  # made here: an anyio limiter needs the app's running event loop
        state.readiness_threads = anyio.CapacityLimiter(2)
    return await anyio.to_thread.run_sync(_readiness, state, limiter=state.readiness_threads)


def _readiness(state: AppState) -> JSONResponse:
    """Ready: database and vector store reachable (`vector_store.error` says why not), and the index no
    further behind SQL than FACEBANK_MAX_FOLLOW_LAG_S (it follows the change log; `changes` reports the
    applied position, the lag, any problem, and for a shared store whether this process writes it). Whether
    this process still runs the database's active embedder is reported (`embedder_active`,
    `restart_needed`) but does not make it unready: after `facebank models use` every server would fail at
    once, while each can still answer from its own model's faces. Faces of other models are counted, never
    in the index."""
    checks: dict[str, object] = {"models": True}
    serving = state.serving
    following = state.follower.status()
    checks["changes"] = {
        "position": following.position,
        "lag_s": round(following.lag_s, 3),
        "max_lag_s": state.settings.max_follow_lag_s,
        "error": following.error,
        "switch_problem": following.switch_problem,
        "writer": following.writer,
    }
    store_problem = serving.gallery.store_problem()
    checks["vector_store"] = {"kind": state.settings.vector_store, "error": store_problem}
    try:
        with state.sessions() as session:
            sql_faces = repo.count_faces(session, model=serving.embedder_tag)
            all_faces = repo.count_faces(session)
            switched_to = service_settings.switched_away_from(session, serving.embedder_tag)
        checks["database"] = True
        index_faces = serving.gallery.face_count() if store_problem is None else None
        checks["index_in_step"] = sql_faces == index_faces
        checks["faces"] = sql_faces
        checks["index_faces"] = index_faces
        checks["embedder"] = serving.embedder_tag
        checks["embedder_active"] = switched_to is None
        checks["restart_needed"] = switched_to is not None
        checks["other_model_faces"] = all_faces - sql_faces
    except Exception as exc:  # any DB failure means not ready, whatever its type
        checks["database"] = False
        checks["error"] = type(exc).__name__
    # Why not index_in_step: with other processes writing, the counts differ for the moment a change takes
    # to arrive; the lag bounds that moment.
    ready = (
        bool(checks["database"])
        and store_problem is None
        and following.lag_s <= state.settings.max_follow_lag_s
    )
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
