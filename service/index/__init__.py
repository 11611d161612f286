"""Vector index over unit embeddings; ids are the database's integer face keys."""

from service.index.base import SearchResult, VectorIndex
from service.index.factory import IndexTypeUnavailable, index_for, index_type_refusal, make_index
from service.index.faiss_gpu import FaissGpuFlatIndex, GpuIndexUnavailable, gpu_unavailable_reason
from service.index.faiss_index import FaissFlatIndex
from service.index.hnsw import FaissHnswIndex, HnswParams
from service.index.ivf import FaissIvfIndex, IvfParams
from service.index.slots import CpuFlatStorage, IndexNeedsRebuild, SlotIndex

__all__ = [
    "CpuFlatStorage",
    "FaissFlatIndex",
    "FaissGpuFlatIndex",
    "FaissHnswIndex",
    "FaissIvfIndex",
    "GpuIndexUnavailable",
    "HnswParams",
    "IndexNeedsRebuild",
    "IndexTypeUnavailable",
    "IvfParams",
    "SearchResult",
    "SlotIndex",
    "VectorIndex",
    "gpu_unavailable_reason",
    "index_for",
    "index_type_refusal",
    "make_index",
]
