"""What the running app holds: built once in the lifespan, handed to routes through dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.admission import Admission
from service.api.batching import RecognitionBatcher
from service.api.throttle import Throttle
from service.config import Settings
from service.follower import ChangeFollower
from service.gallery import SearchGallery
from service.pipeline import FacePipeline


@dataclass(frozen=True, slots=True)
class Serving:
    """The embedder this process serves with: its pipeline, its index, its tag and threshold, and the
    micro-batcher over them. A request takes it once (the `Served` dependency); a switch of embedder
    (`facebank models use`, applied from the change log) replaces it whole, so no request mixes one model's
    vectors with another's index."""

    pipeline: FacePipeline
    gallery: SearchGallery
    threshold: float
    # Gathers concurrent identify/detect requests into one model call; None when batch_max_wait_ms is 0.
    batcher: RecognitionBatcher | None

    @classmethod
    def of(
        cls, settings: Settings, pipeline: FacePipeline, gallery: SearchGallery, threshold: float
    ) -> Serving:
        batcher = None
        if settings.batch_max_wait_ms > 0:
            batcher = RecognitionBatcher(
                pipeline,
                gallery,
                max_faces=settings.max_faces,
                max_size=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                queue=settings.image_queue,
            )
        return cls(pipeline, gallery, threshold, batcher)

    @property
    def embedder_tag(self) -> str:
        return self.gallery.model_tag

    def close(self, timeout: float = 30.0) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    serving: Serving
    # Keeps the serving gallery in step with the change log; every write's index update goes through it.
    follower: ChangeFollower
    # True when the server was configured to listen on loopback only: then, while no API key exists, local
    # callers need none.
    open_without_keys: bool
    # Bounds how many uploads are decoded and run through the networks at once (memory and CPU).
    image_slots: Admission
    # /readyz's own threads, apart from the pool that upload routes fill (made by its first request).
    readiness_threads: anyio.CapacityLimiter | None = None
    # Wrong API keys per client address, and requests per key (429 beyond either; see service/api/auth.py).
    failed_keys: Throttle = field(init=False)
    key_requests: Throttle = field(init=False)

    def __post_init__(self) -> None:
        self.failed_keys = Throttle(self.settings.failed_auth_limit)
        self.key_requests = Throttle(self.settings.rate_limit_per_key)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking batched requests, let the queued ones finish, then release the database."""
        self.serving.close(timeout)
        self.follower.close()
        self.engine.dispose()
