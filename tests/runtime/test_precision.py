"""Which embedder file the configured precision loads, and the start-up error for fp16 without CUDA."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from service.runtime.sessions import Device, ProviderError, embedder_onnx_file, fp16_onnx_file

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_the_fp16_file_sits_next_to_the_fp32_one_with_an_fp16_infix() -> None:
    assert fp16_onnx_file("mobilefacenet.onnx") == "mobilefacenet.fp16.onnx"
    assert fp16_onnx_file("mobilefacenet-celeba-csoftmax.onnx") == "mobilefacenet-celeba-csoftmax.fp16.onnx"


@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_fp32_loads_the_exported_file_on_every_device(device: Device) -> None:
    assert embedder_onnx_file("mobilefacenet.onnx", precision="fp32", device=device) == "mobilefacenet.onnx"


def test_fp16_on_the_cpu_is_an_error_that_names_both_settings() -> None:
    with pytest.raises(ProviderError) as caught:
        embedder_onnx_file("mobilefacenet.onnx", precision="fp16", device="cpu")
    message = str(caught.value)
    assert "FACEBANK_EMBEDDER_PRECISION=fp16" in message and "FACEBANK_DEVICE=cpu" in message
    assert "fp32" in message  # says how to get going again


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_fp16_without_a_cuda_provider_is_refused_whatever_the_device_setting(device: Device) -> None:
    with pytest.raises(ProviderError, match="CUDA provider"):
        embedder_onnx_file("mobilefacenet.onnx", precision="fp16", device=device)


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu (the CUDA provider)")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_fp16_with_a_cuda_provider_loads_the_half_precision_file(device: Device) -> None:
    chosen = embedder_onnx_file("mobilefacenet.onnx", precision="fp16", device=device)
    assert chosen == "mobilefacenet.fp16.onnx"
