"""What the running app holds: built once in the lifespan, handed to routes through dependencies."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.gallery import Gallery
from service.pipeline import FacePipeline


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pipeline: FacePipeline
    gallery: Gallery
    detector_tag: str
    embedder_tag: str
    threshold: float
    # True when the server was configured to listen on loopback only: then, while no API key exists, local
    # callers need none.
    open_without_keys: bool
    # Bounds how many uploads are decoded and run through the networks at once (memory and CPU).
    image_slots: threading.BoundedSemaphore
