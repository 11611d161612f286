"""What the running app holds: built once in the lifespan, handed to routes through dependencies."""

from __future__ import annotations

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
