"""load_models with the embedder precision: fp32 as before, fp16's file checked against its manifest hash,
and fp16 refused at start wherever the CUDA provider would not run it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.config import Settings
from service.pipeline.factory import build_pipeline
from service.runtime import ModelLoadError, load_models
from service.runtime.manifest import Manifest, load_manifest, sha256_file, write_manifest
from service.runtime.models import verified_fp16_onnx
from service.runtime.sessions import Device

DETECTOR, EMBEDDER = "retinaface-mnet025", "mobilefacenet"
FP16_FILE = f"{EMBEDDER}.fp16.onnx"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
PREPARE_AGAIN = "re-run `facebank models prepare"


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy: the session-wide ``model_dir`` is shared by every suite and must stay intact."""
    return Path(shutil.copytree(model_dir, tmp_path / "models"))


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _faces(count: int = 5) -> np.ndarray:
    return np.random.default_rng(3).uniform(-2, 2, (count, 3, 112, 112)).astype(np.float32)


def test_fp32_loads_the_exported_file_unchanged_and_records_its_hash(model_dir: Path) -> None:
    models = load_models(model_dir, detector=DETECTOR, embedder=EMBEDDER)
    entry = load_manifest(model_dir / "manifest.toml").get(EMBEDDER)
    assert models.embedder_precision == "fp32"
    assert models.embedder_onnx_sha256 == entry.onnx_sha256 == sha256_file(model_dir / entry.onnx_file)
    assert models.embedder_tag == "mobilefacenet@1"
    # On the CPU provider the sessions are onnxruntime's own (IO binding is for CUDA only).
    assert isinstance(models.embedder_session, ort.InferenceSession)
    assert isinstance(models.detector_session, ort.InferenceSession)
    plain = ort.InferenceSession(str(model_dir / entry.onnx_file), providers=["CPUExecutionProvider"])
    faces = _faces()
    (loaded,) = models.embedder_session.run(["embedding"], {"input": faces})
    (expected,) = plain.run(["embedding"], {"input": faces})
    np.testing.assert_allclose(loaded, expected, rtol=1e-5, atol=1e-5)


def test_fp32_does_not_read_the_fp16_file(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(model_dir, tmp_path)
    _tamper(copy / FP16_FILE)
    models = load_models(copy, detector=DETECTOR, embedder=EMBEDDER, precision="fp32")
    assert models.embedder_precision == "fp32"


@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_fp16_without_the_cuda_provider_stops_the_start_saying_which_settings_to_change(
    model_dir: Path, device: Device
) -> None:
    if HAS_CUDA and device != "cpu":
        pytest.skip("this onnxruntime has the CUDA provider: fp16 may load here")
    with pytest.raises(ModelLoadError) as caught:
        load_models(model_dir, detector=DETECTOR, embedder=EMBEDDER, device=device, precision="fp16")
    message = str(caught.value)
    assert "FACEBANK_EMBEDDER_PRECISION=fp16" in message and f"FACEBANK_DEVICE={device}" in message
    assert "FACEBANK_EMBEDDER_PRECISION=fp32" in message


def test_build_pipeline_passes_the_precision_setting_on(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, device="cpu", embedder_precision="fp16")
    with pytest.raises(ModelLoadError, match="FACEBANK_EMBEDDER_PRECISION=fp16 runs only on the CUDA"):
        build_pipeline(settings)
    _, models = build_pipeline(settings.model_copy(update={"embedder_precision": "fp32"}))
    assert models.embedder_precision == "fp32"


def test_the_prepared_fp16_file_passes_its_check(model_dir: Path) -> None:
    entry = load_manifest(model_dir / "manifest.toml").get(EMBEDDER)
    assert verified_fp16_onnx(model_dir, entry) == model_dir / FP16_FILE


def test_a_tampered_fp16_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(model_dir, tmp_path)
    _tamper(copy / FP16_FILE)
    entry = load_manifest(copy / "manifest.toml").get(EMBEDDER)
    with pytest.raises(ModelLoadError, match="does not match its manifest fp16_onnx_sha256") as caught:
        verified_fp16_onnx(copy, entry)
    assert PREPARE_AGAIN in str(caught.value)


def test_a_missing_fp16_file_or_hash_asks_to_prepare_again(model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(model_dir, tmp_path)
    manifest = load_manifest(copy / "manifest.toml")
    (copy / FP16_FILE).unlink()
    with pytest.raises(ModelLoadError, match=f"fp16 model file .*{FP16_FILE} is missing") as caught:
        verified_fp16_onnx(copy, manifest.get(EMBEDDER))
    assert PREPARE_AGAIN in str(caught.value)
    # A folder prepared before fp16 existed: no hash, so no file is trusted, even one that is there.
    shutil.copyfile(model_dir / FP16_FILE, copy / FP16_FILE)
    old = Manifest(models=tuple(replace(e, fp16_onnx_sha256=None) for e in manifest))
    write_manifest(old, copy / "manifest.toml")
    with pytest.raises(ModelLoadError, match="mobilefacenet@1 has no fp16 export recorded") as caught:
        verified_fp16_onnx(copy, load_manifest(copy / "manifest.toml").get(EMBEDDER))
    assert PREPARE_AGAIN in str(caught.value)


# The CUDA branch of load_models on a CPU-only machine: onnxruntime is made to list the CUDA provider, as an
# onnxruntime-gpu whose CUDA libraries are missing does. Its sessions then fall back to the CPU provider
# (with a warning), which is the real failure the on_cuda check at start exists for.
needs_cpu_only = pytest.mark.skipif(HAS_CUDA, reason="the CUDA provider is real here")


@pytest.fixture
def cuda_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)


@needs_cpu_only
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_fp16_on_auto_is_refused_when_the_session_fell_back_to_the_cpu(
    model_dir: Path, cuda_listed: None
) -> None:
    with pytest.raises(ModelLoadError, match="needs the CUDA provider, but it is not active") as caught:
        load_models(model_dir, detector=DETECTOR, embedder=EMBEDDER, device="auto", precision="fp16")
    assert FP16_FILE in str(caught.value) and "CPUExecutionProvider" in str(caught.value)


@needs_cpu_only
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_fp16_on_cuda_that_does_not_start_is_a_start_up_error(model_dir: Path, cuda_listed: None) -> None:
    with pytest.raises(ModelLoadError, match="CUDA provider requested but not active"):
        load_models(model_dir, detector=DETECTOR, embedder=EMBEDDER, device="cuda", precision="fp16")


@needs_cpu_only
def test_with_cuda_listed_a_tampered_fp16_file_is_refused_before_any_session_opens(
    model_dir: Path, tmp_path: Path, cuda_listed: None
) -> None:
    copy = _copy(model_dir, tmp_path)
    _tamper(copy / FP16_FILE)
    with pytest.raises(ModelLoadError, match="does not match its manifest fp16_onnx_sha256"):
        load_models(copy, detector=DETECTOR, embedder=EMBEDDER, device="cuda", precision="fp16")
