"""Vector index over unit embeddings; ids are the database's integer face keys."""

from service.index.base import SearchResult, VectorIndex
from service.index.faiss_index import FaissFlatIndex, make_index

__all__ = ["FaissFlatIndex", "SearchResult", "VectorIndex", "make_index"]
