"""`facebank serve`: check keys, models, GPU index and vector store before uvicorn, then run the API."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from service.cli.common import EXIT_USAGE, database, fail
from service.config import Settings

if TYPE_CHECKING:
    from service.runtime import LoadedModels


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the REST API (uvicorn)")
    serve.add_argument("--host", help="bind address (default FACEBANK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FACEBANK_PORT or 8000)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.api import create_app
    from service.security import NO_KEYS_HINT, is_loopback
    from service.storage import keys as key_repo

    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    if not is_loopback(settings.host):
        # The rule: with no API key, serve only on loopback. The app checks again at start.
        with database(settings) as session:
            if not key_repo.has_active_keys(session):
                return fail(
                    f"refusing to serve on {settings.host}: no API key exists, so anyone who can reach it "
                    f"could use the service; {NO_KEYS_HINT}",
                    EXIT_USAGE,
                )
    models, problem = load_for_serving(settings)
    if problem is not None:
        return fail(f"refusing to serve: {problem}", EXIT_USAGE)
    uvicorn.run(
        create_app(settings, models=models),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Inference runs in FastAPI's thread pool; one process keeps one copy of the index.
        workers=1,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: only listed proxies here.
        proxy_headers=bool(settings.trusted_proxy_list),
        forwarded_allow_ips=settings.trusted_proxy_list or [],
    )
    return 0


def load_for_serving(settings: Settings) -> tuple[LoadedModels | None, str | None]:
    """The models the app will run (the database's active embedder, refusing a FACEBANK_EMBEDDER that
    disagrees) and the GPU index check, done before uvicorn: a wrong setting then reads as one line rather
    than a traceback from inside its lifespan. The app checks the embedder again at start; nothing is
    written here."""
    from service.active_model import (
        EmbedderChoiceError,
        available_name,
        configured_tag,
        conflict_message,
        embedder_set_explicitly,
        seeding_tag,
    )
    from service.index import gpu_unavailable_reason, index_type_refusal
    from service.runtime import ModelLoadError, load_models
    from service.storage import service_settings

    try:
        with database(settings) as session:
            recorded = service_settings.active_embedder(session)
            # With no choice recorded, what the app will record (an unprepared default refuses here).
            active = recorded or seeding_tag(settings, session)
        if recorded is not None and embedder_set_explicitly(settings):
            configured = configured_tag(settings)
            if configured != recorded:
                return None, conflict_message(settings, configured, recorded)
        if (refusal := index_type_refusal(settings.index_type, settings.device)) is not None:
            return None, refusal
        if settings.device == "cuda" and (reason := gpu_unavailable_reason()) is not None:
            return None, f"FACEBANK_DEVICE=cuda but the vector index cannot use a GPU: {reason}"
        embedder = available_name(settings, active)
        models = load_models(
            settings.model_dir,
            detector=settings.detector,
            embedder=embedder,
            device=settings.device,
            threads=settings.intra_op_threads,
            precision=settings.embedder_precision,
        )
    except (ModelLoadError, EmbedderChoiceError) as exc:
        return None, str(exc)
    refusal = vector_store_refusal(settings, models.embedder_tag, models.embedder_config.dim)
    if refusal is not None:
        return None, refusal
    return models, None


def vector_store_refusal(settings: Settings, model_tag: str, dim: int) -> str | None:
    """Why the configured shared vector store cannot serve this model (wrong URI or credentials, a
    collection of another dimension or metric), or None. Never a fallback to another store."""
    if settings.vector_store != "milvus":
        return None
    from service.index.milvus import MilvusStore, MilvusTarget, VectorStoreRefused

    try:
        store = MilvusStore.open(MilvusTarget.of(settings), model_tag=model_tag, dim=dim)
    except VectorStoreRefused as exc:
        return str(exc)
    store.close()  # the server opens its own once it starts
    return None
