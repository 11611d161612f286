"""A real ONNX session that records what it was called with, for tests of how the pipeline batches."""

from __future__ import annotations

import numpy as np


class CountingSession:
    """The real ONNX session, recording the input shape of every call."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.shapes.append(feed["input"].shape)
        return self._session.run(output_names, feed)  # type: ignore[attr-defined,no-any-return]
