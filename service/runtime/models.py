"""Load the prepared models named in settings: verify each ONNX file, then open sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.manifest import Manifest, ManifestError, ModelEntry, load_manifest, sha256_file
from service.pipeline.detect import DetectorConfig, OnnxSession
from service.pipeline.embed import EmbedderConfig
from service.runtime.sessions import Device, create_session

PREPARE_HINT = "run `facebank models prepare --from DIR` (or `--download`) to prepare them"


class ModelLoadError(RuntimeError):
    """A prepared model is missing, tampered with, or not the kind asked for."""


@dataclass(frozen=True, slots=True)
class LoadedModels:
    detector_tag: str
    embedder_tag: str
    detector_session: OnnxSession
    embedder_session: OnnxSession
    detector_config: DetectorConfig
    embedder_config: EmbedderConfig


def detector_config(entry: ModelEntry) -> DetectorConfig:
    spec, pre = entry.detector, entry.preprocess
    if spec is None:
        raise ModelLoadError(f"model {entry.name!r} is not a detector")
    return DetectorConfig(
        min_sizes=tuple(tuple(int(s) for s in sizes) for sizes in spec.min_sizes),
        steps=tuple(int(s) for s in spec.steps),
        variances=(float(spec.variances[0]), float(spec.variances[1])),
        mean=tuple(pre.mean),  # type: ignore[arg-type]
        std=tuple(pre.std),  # type: ignore[arg-type]
        channel_order=pre.channel_order,
        score_threshold=spec.score_threshold,
        nms_threshold=spec.nms_threshold,
        max_side=spec.max_side,
    )


def embedder_config(entry: ModelEntry) -> EmbedderConfig:
    spec, pre = entry.embedder, entry.preprocess
    if spec is None:
        raise ModelLoadError(f"model {entry.name!r} is not an embedder")
    return EmbedderConfig(
        input_size=(int(spec.input_size[0]), int(spec.input_size[1])),
        dim=int(spec.dim),
        template=np.asarray(spec.template, dtype=np.float64),
        mean=tuple(pre.mean),  # type: ignore[arg-type]
        std=tuple(pre.std),  # type: ignore[arg-type]
        channel_order=pre.channel_order,
        threshold=float(spec.threshold),
    )


def _verified_onnx(model_dir: Path, entry: ModelEntry) -> Path:
    path = model_dir / entry.onnx_file
    if not path.is_file():
        raise ModelLoadError(f"model file {path} is missing; {PREPARE_HINT}")
    if entry.onnx_sha256 and sha256_file(path) != entry.onnx_sha256:
        raise ModelLoadError(f"model file {path} does not match its manifest sha256; {PREPARE_HINT}")
    return path


def prepared_manifest(model_dir: Path) -> Manifest:
    """The prepared manifest of ``model_dir``; :class:`ModelLoadError` saying how to prepare one."""
    manifest_path = model_dir / "manifest.toml"
    if not manifest_path.is_file():
        raise ModelLoadError(f"no prepared models in {model_dir}; {PREPARE_HINT}")
    try:
        return load_manifest(manifest_path)
    except ManifestError as exc:
        raise ModelLoadError(f"{exc}; {PREPARE_HINT}") from exc


def prepared_entry(model_dir: Path, name: str) -> ModelEntry:
    """The entry called ``name`` in the prepared manifest of ``model_dir`` (not checked against its file)."""
    try:
        return prepared_manifest(model_dir).get(name)
    except ManifestError as exc:
        raise ModelLoadError(f"{exc}; {PREPARE_HINT}") from exc


def verify_embedder(model_dir: Path, name: str, *, device: Device = "cpu", threads: int = 0) -> ModelEntry:
    """Check that ``name`` is a usable embedder in ``model_dir``: in the manifest, its ONNX file matching its
    sha256, and one blank crop through it giving a finite vector of the manifest's width."""
    entry = prepared_entry(model_dir, name)
    config = embedder_config(entry)
    session = create_session(_verified_onnx(model_dir, entry), device=device, threads=threads)
    width, height = config.input_size
    (output,) = session.run(["embedding"], {"input": np.zeros((1, 3, height, width), np.float32)})
    if output.shape != (1, config.dim) or not np.isfinite(output).all():
        raise ModelLoadError(
            f"{entry.tag}: {entry.onnx_file} gave an output of shape {output.shape}, "
            f"the manifest says (1, {config.dim}) finite values"
        )
    return entry


def load_models(
    model_dir: Path, *, detector: str, embedder: str, device: Device = "cpu", threads: int = 0
) -> LoadedModels:
    manifest = prepared_manifest(model_dir)
    try:
        det_entry, emb_entry = manifest.get(detector), manifest.get(embedder)
    except (ManifestError, KeyError) as exc:
        raise ModelLoadError(f"{model_dir / 'manifest.toml'}: {exc}; {PREPARE_HINT}") from exc
    det_config, emb_config = detector_config(det_entry), embedder_config(emb_entry)
    return LoadedModels(
        detector_tag=det_entry.tag,
        embedder_tag=emb_entry.tag,
        detector_session=create_session(_verified_onnx(model_dir, det_entry), device=device, threads=threads),
        embedder_session=create_session(_verified_onnx(model_dir, emb_entry), device=device, threads=threads),
        detector_config=det_config,
        embedder_config=emb_config,
    )
