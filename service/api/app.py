"""create_app: settings in, a FastAPI app out; everything heavy is built in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from service import __version__
from service.api.errors import install_error_handlers
from service.api.metrics import install_metrics
from service.api.routes import health, identities, recognition
from service.api.state import AppState
from service.config import Settings
from service.gallery import Gallery
from service.index import make_index
from service.pipeline.factory import build_pipeline
from service.runtime import LoadedModels
from service.storage.engine import make_engine, make_session_factory
from service.storage.migrate import upgrade_to_head

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def build_state(settings: Settings, models: LoadedModels | None = None) -> AppState:
    """Open the database (migrated to head), load models, rebuild the index from SQL."""
    pipeline, models = build_pipeline(settings, models)
    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    gallery = Gallery(
        make_index(
            models.embedder_config.dim, device=settings.device, search_threads=settings.search_threads
        ),
        sessions,
        models.embedder_tag,
    )
    gallery.rebuild()
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        pipeline=pipeline,
        gallery=gallery,
        detector_tag=models.detector_tag,
        embedder_tag=models.embedder_tag,
        threshold=models.embedder_config.threshold,
    )


def create_app(settings: Settings | None = None, *, models: LoadedModels | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, models)
        app.state.facebank = state
        try:
            yield
        finally:
            state.engine.dispose()

    app = FastAPI(
        title="facebank",
        version=__version__,
        description="Enroll people from photos and ask who is in a new photo.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(identities.router)
    app.include_router(recognition.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app
