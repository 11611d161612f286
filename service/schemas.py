"""Internal values passed between pipeline stages, the index and the API layer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face found by the detector, in the original image's pixel coordinates."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True, slots=True)
class EmbeddedFace:
    """A detected face with its L2-normalised embedding."""

    face: DetectedFace
    embedding: np.ndarray  # (dim,) float32, unit norm


@dataclass(frozen=True, slots=True)
class Match:
    identity_id: uuid.UUID
    name: str
    score: float
