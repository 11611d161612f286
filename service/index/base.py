"""The index interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class SearchResult:
    scores: np.ndarray  # (queries, k) float32 cosine similarity, best first
    ids: np.ndarray  # (queries, k) int64 face keys; -1 where fewer than k vectors exist

    @classmethod
    def empty(cls, queries: int, k: int) -> SearchResult:
        """What an empty index answers: no keys, scores below any match."""
        shape = (queries, k)
        return cls(np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64))


class VectorIndex(Protocol):
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add unit vectors (n, dim) under int64 ids; an id already present is replaced."""

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present."""

    def search(self, queries: np.ndarray, k: int) -> SearchResult: ...

    def ids(self) -> np.ndarray:
        """All ids present, sorted (for audits against SQL)."""

    def reset(self) -> None: ...
