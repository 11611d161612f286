"""Embed aligned crops with the ONNX embedder and L2-normalise the result."""

from __future__ import annotations

import numpy as np

from service.runtime.stages import BindingSession, EmbedderConfig, OnnxSession


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


class Embedder:
    """Runs an embedding ONNX graph (input `input` N×3×H×W; output `embedding` N×dim).

    With a :class:`BindingSession` each chunk's embeddings land directly in the result array.
    """

    def __init__(self, session: OnnxSession | BindingSession, config: EmbedderConfig) -> None:
        self._session = session
        self.config = config

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        pixels: np.ndarray = crops.astype(np.float32)
        if self.config.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.config.mean, np.float32)) / np.asarray(self.config.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB crops → (N, dim) unit vectors, in chunks of max_batch."""
        if len(crops) == 0:
            return np.zeros((0, self.config.dim), np.float32)
        session = self._session
        if isinstance(session, BindingSession):
            result = np.empty((len(crops), self.config.dim), np.float32)
            for start in range(0, len(crops), self.config.max_batch):
                stop = min(start + self.config.max_batch, len(crops))
                batch = self.preprocess(crops[start:stop])
                session.run_into({"input": batch}, {"embedding": result[start:stop]})
            return l2_normalize(result)
        outputs = []
        for start in range(0, len(crops), self.config.max_batch):
            batch = self.preprocess(crops[start : start + self.config.max_batch])
            (embedding,) = session.run(["embedding"], {"input": batch})
            outputs.append(embedding)
        return l2_normalize(np.concatenate(outputs))
