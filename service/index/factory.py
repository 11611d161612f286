"""`make_index`: the index for the configured device."""

from __future__ import annotations

import logging
from typing import Literal

from service.index.base import VectorIndex
from service.index.faiss_gpu import FaissGpuFlatIndex, GpuIndexUnavailable, gpu_unavailable_reason
from service.index.faiss_index import FaissFlatIndex

log = logging.getLogger(__name__)


def make_index(
    dim: int,
    *,
    device: Literal["auto", "cpu", "cuda"] = "cpu",
    search_threads: int = 1,
    fp16: bool = True,
) -> VectorIndex:
    """`cpu`: FaissFlatIndex; `cuda`: FaissGpuFlatIndex or a clear error; `auto`: the GPU if FAISS has one.

    `search_threads` is the CPU index's OpenMP thread count per search, `fp16` the GPU index's storage.
    """
    # Requests already search concurrently from a thread pool, and waking OpenMP workers for one small
    # query costs more than it saves (a 100-face search took 9.6 ms in the server with 2 threads).
    if device == "cpu":
        return FaissFlatIndex(dim, search_threads=search_threads)
    reason = gpu_unavailable_reason()
    if device == "cuda":
        if reason is not None:
            raise GpuIndexUnavailable(
                f"FACEBANK_DEVICE=cuda but the GPU index cannot start: {reason}. "
                "Use FACEBANK_DEVICE=cpu, or auto to fall back to the CPU."
            )
        return FaissGpuFlatIndex(dim, fp16=fp16)
    if device != "auto":
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if reason is None:
        log.info("device=auto: FAISS sees a GPU; using the GPU flat index (%s)", "fp16" if fp16 else "fp32")
        return FaissGpuFlatIndex(dim, fp16=fp16)
    log.info("device=auto: no GPU index (%s); using the CPU flat index", reason)
    return FaissFlatIndex(dim, search_threads=search_threads)
