"""make_index: which index each FACEBANK_DEVICE gives, here and (when FAISS sees one) on a GPU."""

from __future__ import annotations

import logging

import pytest

from service.index import (
    FaissFlatIndex,
    FaissGpuFlatIndex,
    GpuIndexUnavailable,
    gpu_unavailable_reason,
    make_index,
)

NO_GPU = gpu_unavailable_reason()


def test_cpu_gives_the_cpu_flat_index_with_its_thread_setting() -> None:
    index = make_index(8, device="cpu", search_threads=3)
    assert isinstance(index, FaissFlatIndex) and index.search_threads == 3


@pytest.mark.skipif(NO_GPU is None, reason="FAISS sees a GPU here; this checks the machine without one")
def test_cuda_without_a_gpu_fails_at_start_and_says_why() -> None:
    with pytest.raises(GpuIndexUnavailable, match="FACEBANK_DEVICE=cuda") as raised:
        make_index(8, device="cuda")
    assert NO_GPU is not None and NO_GPU in str(raised.value)


@pytest.mark.skipif(NO_GPU is None, reason="FAISS sees a GPU here; this checks the machine without one")
def test_auto_without_a_gpu_falls_back_to_the_cpu_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.index.factory"):
        index = make_index(8, device="auto", search_threads=2)
    assert isinstance(index, FaissFlatIndex) and index.search_threads == 2
    assert "using the CPU flat index" in caplog.text and str(NO_GPU) in caplog.text


@pytest.mark.skipif(NO_GPU is None, reason="FAISS sees a GPU here")
def test_the_gpu_index_itself_refuses_to_start_without_a_gpu() -> None:
    with pytest.raises(GpuIndexUnavailable):
        FaissGpuFlatIndex(8)


@pytest.mark.skipif(NO_GPU is not None, reason=f"needs FAISS with a GPU: {NO_GPU}")
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_cuda_and_auto_give_the_gpu_index_when_faiss_sees_a_gpu(device: str) -> None:
    index = make_index(8, device=device, fp16=False)  # type: ignore[arg-type]
    assert isinstance(index, FaissGpuFlatIndex) and index.fp16 is False


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="device"):
        make_index(8, device="tpu")  # type: ignore[arg-type]
