"""decode → detect → align → embed, and the one function that chains them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.pipeline.align import align_face
from service.pipeline.decode import ImageDecodeError, decode_image
from service.pipeline.detect import Detector
from service.pipeline.embed import Embedder, l2_normalize
from service.runtime.stages import DetectorConfig, EmbedderConfig
from service.schemas import DetectedFace, EmbeddedFace

__all__ = [
    "DetectionLimits",
    "Detector",
    "DetectorConfig",
    "Embedder",
    "EmbedderConfig",
    "FacePipeline",
    "ImageDecodeError",
    "StageTimes",
    "decode_image",
    "l2_normalize",
]


@dataclass
class StageTimes:
    """Wall time per stage in seconds, for metrics and benchmarks."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class DetectionLimits:
    max_side: int
    score_threshold: float | None
    min_face_size: float
    find_down_to: float = 0.0  # photo pixels; see Detector.detect_many

    def for_request(self, min_face_size: float | None) -> tuple[float, float]:
        """(find_down_to, min_face_size) for a request: one that names its smallest face gets both."""
        if min_face_size is None:
            return self.find_down_to, self.min_face_size
        return min_face_size, min_face_size


class FacePipeline:
    """Detect every face of an image, align each, embed them all in one batch."""

    def __init__(self, detector: Detector, embedder: Embedder, limits: DetectionLimits) -> None:
        self.detector = detector
        self.embedder = embedder
        self.limits = limits

    def detect(
        self, image: Image.Image, times: StageTimes | None = None, min_face_size: float | None = None
    ) -> list[DetectedFace]:
        """Every face found, best score first (how many a photo may have is `face_policy`'s rule);
        `min_face_size` (photo pixels) overrides the limits' smallest face."""
        return self.detect_many([image], times, [min_face_size])[0]

    def detect_many(
        self,
        images: Sequence[Image.Image],
        times: StageTimes | None = None,
        min_face_sizes: Sequence[float | None] | None = None,
    ) -> list[list[DetectedFace]]:
        """`detect` for several images, with one detector call per distinct input shape."""
        times = times or StageTimes()
        wanted = [self.limits.for_request(size) for size in (min_face_sizes or [None] * len(images))]
        with times.stage("detect"):
            return self.detector.detect_many(
                images,
                max_side=self.limits.max_side,
                score_threshold=self.limits.score_threshold,
                min_face_size=[smallest for _, smallest in wanted],
                find_down_to=[down_to for down_to, _ in wanted],
            )

    def align(
        self, image: Image.Image, faces: list[DetectedFace], times: StageTimes | None = None
    ) -> np.ndarray:
        cfg = self.embedder.config
        times = times or StageTimes()
        with times.stage("align"):
            if not faces:
                return np.zeros((0, cfg.input_size[1], cfg.input_size[0], 3), np.uint8)
            return np.stack([align_face(image, f.landmarks, cfg.template, cfg.input_size) for f in faces])

    def embed_faces(
        self, image: Image.Image, faces: list[DetectedFace], times: StageTimes | None = None
    ) -> list[EmbeddedFace]:
        times = times or StageTimes()
        crops = self.align(image, faces, times)
        with times.stage("embed"):
            vectors = self.embedder.embed(crops)
        return [EmbeddedFace(face=f, embedding=v) for f, v in zip(faces, vectors, strict=True)]

    def embed_many(
        self,
        images: Sequence[Image.Image],
        faces: Sequence[list[DetectedFace]],
        times: StageTimes | None = None,
    ) -> list[list[EmbeddedFace]]:
        """`embed_faces` for several images, every face of every image in one embedder call."""
        times = times or StageTimes()
        crops = [
            self.align(image, image_faces, times) for image, image_faces in zip(images, faces, strict=True)
        ]
        with times.stage("embed"):
            vectors = self.embedder.embed(np.concatenate(crops)) if crops else np.zeros((0, 0), np.float32)
        embedded: list[list[EmbeddedFace]] = []
        start = 0
        for image_faces in faces:
            rows = vectors[start : start + len(image_faces)]
            embedded.append(
                [EmbeddedFace(face=f, embedding=v) for f, v in zip(image_faces, rows, strict=True)]
            )
            start += len(image_faces)
        return embedded

    def analyze(self, image: Image.Image, times: StageTimes | None = None) -> list[EmbeddedFace]:
        """All faces of the image with their embeddings, best detection score first."""
        times = times or StageTimes()
        return self.embed_faces(image, self.detect(image, times), times)
