"""Vector index over unit embeddings; ids are the database's integer face keys."""

from service.index.base import SearchResult, VectorIndex
from service.index.factory import make_index
from service.index.faiss_gpu import FaissGpuFlatIndex, GpuIndexUnavailable, gpu_unavailable_reason
from service.index.faiss_index import FaissFlatIndex
from service.index.slots import CpuFlatStorage, IndexNeedsRebuild, SlotIndex

__all__ = [
    "CpuFlatStorage",
    "FaissFlatIndex",
    "FaissGpuFlatIndex",
    "GpuIndexUnavailable",
    "IndexNeedsRebuild",
    "SearchResult",
    "SlotIndex",
    "VectorIndex",
    "gpu_unavailable_reason",
    "make_index",
]
