"""Build the pipeline from settings: the one recipe shared by the API, the CLI tools and evaluation."""

from __future__ import annotations

from service.config import Settings
from service.pipeline import DetectionLimits, Detector, Embedder, FacePipeline
from service.runtime import LoadedModels, load_models


def build_pipeline(
    settings: Settings, models: LoadedModels | None = None
) -> tuple[FacePipeline, LoadedModels]:
    models = models or load_models(
        settings.model_dir,
        detector=settings.detector,
        embedder=settings.embedder,
        device=settings.device,
        threads=settings.intra_op_threads,
        precision=settings.embedder_precision,
    )
    pipeline = FacePipeline(
        Detector(models.detector_session, models.detector_config),
        Embedder(models.embedder_session, models.embedder_config),
        DetectionLimits(
            max_side=settings.detect_max_side,
            score_threshold=settings.det_score_threshold,
            min_face_size=settings.min_face_size,
            find_down_to=settings.detect_find_down_to,
        ),
    )
    return pipeline, models
