"""What the running app holds: built once in the lifespan, handed to routes through dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.admission import Admission
from service.api.batching import RecognitionBatcher
from service.api.throttle import Throttle
from service.config import Settings
from service.follower import ChangeFollower
from service.gallery import Gallery
from service.pipeline import FacePipeline


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pipeline: FacePipeline
    gallery: Gallery
    # Keeps `gallery` in step with the change log; every write's index update goes through it.
    follower: ChangeFollower
    detector_tag: str
    embedder_tag: str
    threshold: float
    # True when the server was configured to listen on loopback only: then, while no API key exists, local
    # callers need none.
    open_without_keys: bool
    # Bounds how many uploads are decoded and run through the networks at once (memory and CPU).
    image_slots: Admission
    # Gathers concurrent identify/detect requests into one model call; None when batch_max_wait_ms is 0.
    batcher: RecognitionBatcher | None = None
    # Wrong API keys per client address, and requests per key (429 beyond either; see service/api/auth.py).
    failed_keys: Throttle = field(init=False)
    key_requests: Throttle = field(init=False)

    def __post_init__(self) -> None:
        self.failed_keys = Throttle(self.settings.failed_auth_limit)
        self.key_requests = Throttle(self.settings.rate_limit_per_key)
        if self.batcher is None and self.settings.batch_max_wait_ms > 0:
            self.batcher = RecognitionBatcher(
                self.pipeline,
                self.gallery,
                max_faces=self.settings.max_faces,
                max_size=self.settings.batch_max_size,
                max_wait_s=self.settings.batch_max_wait_ms / 1000,
                queue=self.settings.image_queue,
            )

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking batched requests, let the queued ones finish, then release the database."""
        if self.batcher is not None:
            self.batcher.close(timeout)
        self.follower.close()
        self.engine.dispose()
