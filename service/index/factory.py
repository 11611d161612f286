"""`make_index`: the index for the configured device and index type."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, get_args

from service.index.base import VectorIndex
from service.index.faiss_gpu import FaissGpuFlatIndex, GpuIndexUnavailable, gpu_unavailable_reason
from service.index.faiss_index import FaissFlatIndex
from service.index.hnsw import FaissHnswIndex, HnswParams
from service.index.ivf import FaissIvfIndex, IvfParams

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

IndexType = Literal["flat", "hnsw", "ivf"]


class IndexTypeUnavailable(ValueError):
    """The configured index type cannot run on the configured device."""


def index_type_refusal(index_type: str, device: str) -> str | None:
    """Why this index type cannot serve on this device (a one-line start-up refusal), or None."""
    if index_type not in get_args(IndexType):
        return f"FACEBANK_INDEX_TYPE must be flat, hnsw or ivf, not {index_type!r}"
    if index_type in ("hnsw", "ivf") and device == "cuda":
        # FAISS has no GPU HNSW, and facebank no GPU IVF (FAISS's would need its own id and training
        # paths); moving the gallery to the CPU unasked would hide a wrong setting.
        return (
            f"FACEBANK_INDEX_TYPE={index_type} runs on the CPU only, but FACEBANK_DEVICE=cuda: use "
            "FACEBANK_DEVICE=cpu (or auto: models on the GPU, this index on the CPU) "
            "or FACEBANK_INDEX_TYPE=flat"
        )
    return None


def index_for(settings: Settings, dim: int) -> VectorIndex:
    """The index `settings` ask for (device, type and their parameters)."""
    return make_index(
        dim,
        device=settings.device,
        search_threads=settings.search_threads,
        fp16=settings.index_fp16,
        index_type=settings.index_type,
        hnsw=HnswParams(
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
        ),
        ivf=IvfParams(
            nlist=settings.ivf_nlist, nprobe=settings.ivf_nprobe, min_per_list=settings.ivf_min_per_list
        ),
    )


def make_index(
    dim: int,
    *,
    device: Literal["auto", "cpu", "cuda"] = "cpu",
    search_threads: int = 1,
    fp16: bool = True,
    index_type: IndexType = "flat",
    hnsw: HnswParams | None = None,
    ivf: IvfParams | None = None,
) -> VectorIndex:
    """`cpu`: FaissFlatIndex; `cuda`: FaissGpuFlatIndex or a clear error; `auto`: the GPU if FAISS has one.

    `index_type="hnsw"` / `"ivf"`: FaissHnswIndex / FaissIvfIndex (approximate, CPU only: refused with
    `cuda`, on the CPU with `auto`). `search_threads` is the CPU indexes' OpenMP thread count per search,
    `fp16` the GPU index's storage.
    """
    refusal = index_type_refusal(index_type, device)
    if refusal is not None:
        raise IndexTypeUnavailable(refusal)
    if index_type in ("hnsw", "ivf"):
        if device == "auto":
            log.info("index type %s: the index runs on the CPU whatever device=auto finds", index_type)
        if index_type == "ivf":
            return FaissIvfIndex(dim, params=ivf or IvfParams(), search_threads=search_threads)
        return FaissHnswIndex(dim, params=hnsw or HnswParams(), search_threads=search_threads)
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
