"""Concurrent /v1/identify and /v1/detect requests micro-batched through the networks and the gallery.

A batch runs the detector once per distinct input shape (one call when the photos share a size; padding
photos to a common shape changes what the detector sees at their edges, see `Detector.detect_many`), the
embedder once for every face of every request, and one gallery search for every query. The answers are the
ones each request would get alone. When a batch raises, its requests are run again one at a time, so a
picture that crashes a stage fails only its own request (500 batch_failed).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.api.admission import Admission
from service.api.errors import APIError
from service.gallery import SearchGallery
from service.pipeline import FacePipeline, StageTimes
from service.pipeline.batching import BatcherClosed, BatchFailed, BatchStats, ItemFailed, MicroBatcher
from service.pipeline.face_policy import FaceRefused, check_face_limit
from service.schemas import DetectedFace, EmbeddedFace, Match


@dataclass(frozen=True, slots=True)
class RecognitionRequest:
    picture: Image.Image
    top_k: int | None  # None: detect only
    min_face_size: float | None = None  # None: the pipeline's default


@dataclass(frozen=True, slots=True)
class RecognitionResult:
    faces: list[DetectedFace]
    embedded: list[EmbeddedFace]  # empty for detect-only requests
    matches: list[list[Match]]  # per embedded face, at most top_k


class RecognitionBatcher:
    """Gathers recognition requests (up to `max_size`, or `max_wait_s` after the first) into one batch."""

    def __init__(
        self,
        pipeline: FacePipeline,
        gallery: SearchGallery,
        *,
        max_faces: int,
        max_size: int,
        max_wait_s: float,
        queue: int = 0,
    ) -> None:
        self._pipeline = pipeline
        self._gallery = gallery
        self._max_faces = max_faces
        self._batcher: MicroBatcher[RecognitionRequest, RecognitionResult] = MicroBatcher(
            self._run, max_size=max_size, max_wait_s=max_wait_s
        )
        # Bounds the decoded photos held for batching: one batch running and one gathering.
        self._admission = Admission(2 * max_size, queue=queue)

    def admitted(self) -> AbstractContextManager[None]:
        """Hold a place among the requests being batched (503 busy when none is near)."""
        return self._admission.held()

    def submit(self, request: RecognitionRequest, times: StageTimes) -> RecognitionResult:
        try:
            return self._batcher.submit(request, times)
        except BatcherClosed as exc:
            raise APIError(503, "shutting_down", "the service is shutting down; try again shortly") from exc
        except ItemFailed as exc:  # failed alone too, after its batch failed: its own picture is the cause
            raise APIError(500, "batch_failed", "processing this request's picture failed") from exc
        except BatchFailed as exc:
            message = "processing failed for the batch this request was in"
            raise APIError(500, "batch_failed", message) from exc

    def close(self, timeout: float | None = None) -> bool:
        return self._batcher.close(timeout)

    def stats(self) -> BatchStats:
        return self._batcher.stats()

    def queued(self) -> int:
        return self._batcher.queued()

    def _run(
        self, requests: list[RecognitionRequest], times: StageTimes
    ) -> list[RecognitionResult | Exception]:
        found = self._pipeline.detect_many(
            [r.picture for r in requests], times, [r.min_face_size for r in requests]
        )
        outcomes: list[RecognitionResult | Exception] = []
        to_embed: list[int] = []
        for row, (request, faces) in enumerate(zip(requests, found, strict=True)):
            try:
                check_face_limit(faces, self._max_faces, "image")
            except FaceRefused as refused:
                outcomes.append(refused)
                continue
            outcomes.append(RecognitionResult(faces=faces, embedded=[], matches=[]))
            if request.top_k is not None and faces:
                to_embed.append(row)
        if not to_embed:
            return outcomes
        embedded = self._pipeline.embed_many(
            [requests[row].picture for row in to_embed], [found[row] for row in to_embed], times
        )
        # One search at the largest k: with an exact index a smaller k's answer is this one's prefix.
        deepest = max(requests[row].top_k or 1 for row in to_embed)
        with times.stage("search"):
            ranked = self._gallery.identify(
                np.stack([face.embedding for faces in embedded for face in faces]), deepest
            )
        start = 0
        for row, vectors in zip(to_embed, embedded, strict=True):
            top_k = requests[row].top_k or 1
            matches = [m[:top_k] for m in ranked[start : start + len(vectors)]]
            outcomes[row] = RecognitionResult(faces=found[row], embedded=vectors, matches=matches)
            start += len(vectors)
        return outcomes
