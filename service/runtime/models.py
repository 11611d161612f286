"""Load the prepared models named in settings: verify each ONNX file, then open sessions.

The embedder runs in fp32 (``onnx_file``) or, with ``precision="fp16"``, from its half-precision export
(``<stem>.fp16.onnx``, checked against ``fp16_onnx_sha256``), which runs only on the CUDA provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.runtime.manifest import Manifest, ManifestError, ModelEntry, load_manifest, sha256_file
from service.runtime.sessions import (
    Device,
    IoBoundSession,
    Precision,
    ProviderError,
    create_session,
    embedder_onnx_file,
    fp16_onnx_file,
    on_cuda,
    runner_for,
)
from service.runtime.stages import DetectorConfig, EmbedderConfig, OnnxSession

PREPARE_HINT = "run `facebank models prepare --from DIR` (or `--download`) to prepare them"
FP16_HINT = (
    "re-run `facebank models prepare --from DIR` (it writes the embedder's fp16 export), "
    "or set FACEBANK_EMBEDDER_PRECISION=fp32"
)


class ModelLoadError(RuntimeError):
    """A prepared model is missing, tampered with, or not the kind asked for."""


@dataclass(frozen=True, slots=True)
class LoadedModels:
    detector_tag: str
    embedder_tag: str
    detector_session: OnnxSession | IoBoundSession
    embedder_session: OnnxSession | IoBoundSession
    detector_config: DetectorConfig
    embedder_config: EmbedderConfig
    embedder_precision: Precision = "fp32"
    # sha256 of the embedder file actually loaded (the fp16 export's for fp16): what made the embeddings
    embedder_onnx_sha256: str | None = None


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


def verified_fp16_onnx(model_dir: Path, entry: ModelEntry) -> Path:
    """The embedder's fp16 export in ``model_dir``, present and matching ``fp16_onnx_sha256``; unlike the
    fp32 file it is never loaded unchecked: a manifest without the hash (prepared before fp16 existed, or a
    trained model) is an error too."""
    path = model_dir / fp16_onnx_file(entry.onnx_file)
    if entry.fp16_onnx_sha256 is None:
        raise ModelLoadError(
            f"{entry.tag} has no fp16 export recorded in {model_dir / 'manifest.toml'}; {FP16_HINT}"
        )
    if not path.is_file():
        raise ModelLoadError(f"fp16 model file {path} is missing; {FP16_HINT}")
    if sha256_file(path) != entry.fp16_onnx_sha256:
        raise ModelLoadError(
            f"fp16 model file {path} does not match its manifest fp16_onnx_sha256; {FP16_HINT}"
        )
    return path


def embedder_path(model_dir: Path, entry: ModelEntry, *, precision: Precision, device: Device) -> Path:
    """The verified embedder file to load for ``precision`` on ``device``. fp16 without a CUDA provider is a
    :class:`ModelLoadError` before any file is read: the fix is a setting, not a file."""
    try:
        file_name = embedder_onnx_file(entry.onnx_file, precision=precision, device=device)
    except ProviderError as exc:
        raise ModelLoadError(str(exc)) from exc
    if file_name == entry.onnx_file:
        return _verified_onnx(model_dir, entry)
    return verified_fp16_onnx(model_dir, entry)


def _session(path: Path, *, device: Device, threads: int) -> ort.InferenceSession:
    """``create_session``, with a provider asked for but not active as a start-up :class:`ModelLoadError`."""
    try:
        return create_session(path, device=device, threads=threads)
    except ProviderError as exc:
        raise ModelLoadError(str(exc)) from exc


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
    model_dir: Path,
    *,
    detector: str,
    embedder: str,
    device: Device = "cpu",
    threads: int = 0,
    precision: Precision = "fp32",
) -> LoadedModels:
    """Verify and open the detector and the embedder (its fp16 export for ``precision="fp16"``, CUDA only);
    :class:`ModelLoadError` says what to run or set when a file or a provider is not there."""
    manifest = prepared_manifest(model_dir)
    try:
        det_entry, emb_entry = manifest.get(detector), manifest.get(embedder)
    except (ManifestError, KeyError) as exc:
        raise ModelLoadError(f"{model_dir / 'manifest.toml'}: {exc}; {PREPARE_HINT}") from exc
    det_config, emb_config = detector_config(det_entry), embedder_config(emb_entry)
    emb_path = embedder_path(model_dir, emb_entry, precision=precision, device=device)
    detector_session = _session(_verified_onnx(model_dir, det_entry), device=device, threads=threads)
    embedder_session = _session(emb_path, device=device, threads=threads)
    # device=auto falls back to the CPU provider quietly when CUDA cannot start (a missing library); the CPU
    # provider would run the fp16 file in fp32 with rounded weights, slower than fp32: refuse instead.
    if precision == "fp16" and not on_cuda(embedder_session):
        raise ModelLoadError(
            f"FACEBANK_EMBEDDER_PRECISION=fp16 needs the CUDA provider, but it is not active for "
            f"{emb_path.name} (active: {embedder_session.get_providers()}); check the CUDA libraries "
            "(onnxruntime logs why it fell back) or set FACEBANK_EMBEDDER_PRECISION=fp32"
        )
    return LoadedModels(
        detector_tag=det_entry.tag,
        # Same tag for fp16: its embeddings agree with fp32's to a cosine of at least 0.99996 on all 13,233
        # LFW faces (fp16 emulated on the CPU, docs/accuracy.md), so fp32 and fp16 embeddings share one
        # gallery and switching precision needs no re-ingest.
        embedder_tag=emb_entry.tag,
        # IO binding on the CUDA provider; the sessions themselves on the CPU
        detector_session=runner_for(detector_session),
        embedder_session=runner_for(embedder_session),
        detector_config=det_config,
        embedder_config=emb_config,
        embedder_precision=precision,
        embedder_onnx_sha256=emb_entry.fp16_onnx_sha256 if precision == "fp16" else emb_entry.onnx_sha256,
    )

