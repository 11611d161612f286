"""create_app: settings in, a FastAPI app out; everything heavy is built in the lifespan."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service import __version__
from service.active_model import available_name, resolve_embedder
from service.api.access import HostPolicy, TrustedHostMiddleware
from service.api.admission import Admission
from service.api.auth import AuthMiddleware
from service.api.errors import install_error_handlers
from service.api.limits import BodyLimitMiddleware, keep_uploads_in_memory
from service.api.memory import unmap_large_blocks
from service.api.metrics import install_metrics
from service.api.routes import admin, health, identities, recognition
from service.api.state import AppState, Serving
from service.config import Settings
from service.follower import ChangeFollower
from service.gallery import SearchGallery, gallery_for
from service.pipeline.factory import build_pipeline
from service.runtime import LoadedModels
from service.security import NO_KEYS_HINT, is_loopback
from service.storage import keys as key_repo
from service.storage.changes import listener_for
from service.storage.engine import make_engine, make_session_factory
from service.storage.locks import writer_lock
from service.storage.migrate import upgrade_to_head

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


class NoKeysOnPublicAddress(RuntimeError):
    """The server would listen beyond loopback while no API key exists, so anyone could use it."""


def build_state(settings: Settings, models: LoadedModels | None = None) -> AppState:
    """Open the database (migrated to head), load the database's active embedder (see
    service/active_model.py), rebuild the index from SQL (or join the shared Milvus store) and verify it."""
    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    loopback = is_loopback(settings.host)
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_host_list:
        log.warning(
            "listening on %s but FACEBANK_ALLOWED_HOSTS is empty: only requests naming a loopback Host are "
            "answered (400 invalid_host for the rest)",
            settings.host,
        )
    if not loopback:
        with sessions() as session:
            if not key_repo.has_active_keys(session):
                engine.dispose()
                raise NoKeysOnPublicAddress(
                    f"refusing to serve on {settings.host}: no API key exists, so anyone could use the "
                    f"service; {NO_KEYS_HINT}"
                )
    try:
        settings = resolve_embedder(settings, sessions, loaded_tag=models.embedder_tag if models else None)
        pipeline, models = build_pipeline(settings, models)
        gallery = gallery_for(settings, sessions, models.embedder_tag, models.embedder_config.dim)
        follower = ChangeFollower(
            gallery,
            sessions,
            poll_s=settings.follow_poll_ms / 1000,
            retention_s=settings.changes_retention_s,
            listen=listener_for(engine),
            election=writer_lock(engine) if gallery.shared else None,
        )
        follower.start_up()
    except Exception:  # a wrong model, a missing GPU, a failed rebuild, Milvus refused: nothing may stay open
        engine.dispose()
        raise
    # Checks the index against the keys the rebuild just read (a second full SQL read took 9.6 s at 1M
    # faces); writes by other processes since then show in /readyz and `facebank doctor`. A shared store
    # was checked by its writer on taking over (counts; `facebank doctor` compares every key).
    if not gallery.shared and not (audit := gallery.audit(since_rebuild=True)).in_step:
        log.warning("index differs from SQL after the start-up rebuild: %s", audit)
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        serving=Serving.of(settings, pipeline, gallery, models.embedder_config.threshold),
        follower=follower,
        open_without_keys=loopback,
        image_slots=Admission(max(2, os.cpu_count() or 2), queue=settings.image_queue),
    )
    follower.on_switch = lambda tag: _switch_embedder(state, tag)
    follower.start()
    return state


def _switch_embedder(state: AppState, tag: str) -> SearchGallery:
    """After `facebank models use`: load `tag`'s models, rebuild its index from SQL (Milvus: its writer fills
    the new model's collection; a reader waits for that, and the follower tries again later when it was not
    filled in time), then serve with them. Raises (and nothing changes) when this host cannot, e.g. the
    model is not prepared in its model folder."""
    settings = state.settings.model_copy(update={"embedder": available_name(state.settings, tag)})
    pipeline, models = build_pipeline(settings)
    dim, writer = models.embedder_config.dim, state.follower.is_writer
    gallery = gallery_for(settings, state.sessions, models.embedder_tag, dim, writer=writer)
    faces = gallery.rebuild()
    previous, state.serving = (
        state.serving,
        Serving.of(settings, pipeline, gallery, models.embedder_config.threshold),
    )
    previous.close()  # lets its queued batched requests finish; new ones take the new serving
    log.info("now serving with %s (%d faces)", models.embedder_tag, faces)
    return gallery


def create_app(settings: Settings | None = None, *, models: LoadedModels | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, models)
        app.state.facebank = state
        try:
            yield
        finally:
            # Refuses new batched requests and lets queued ones finish before the engine goes.
            state.close()

    app = FastAPI(
        title="facebank",
        version=__version__,
        description="Enroll people from photos and ask who is in a new photo.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    keep_uploads_in_memory(settings.max_upload_bytes)
    unmap_large_blocks()
    # Order: the last added runs first, so metrics see everything, then the Host check, the body limit and
    # authentication.
    app.add_middleware(AuthMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(TrustedHostMiddleware, policy=HostPolicy(settings.host, settings.allowed_host_list))
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(identities.router)
    app.include_router(recognition.router)
    app.include_router(admin.router)

    # The page's script and style sheet (index.html is served at /).
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app
