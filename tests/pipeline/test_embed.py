import numpy as np

from service.pipeline.embed import Embedder, l2_normalize
from service.runtime.stages import EmbedderConfig


def test_l2_normalize_gives_unit_rows_and_leaves_zero_rows_finite() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    out = l2_normalize(vectors)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(np.isfinite(out[1]))


class _RecordingSession:
    """Stands in for an ONNX session: returns the per-image channel means, recording batch sizes."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = feed["input"]
        self.batches.append(batch)
        return [batch.mean(axis=(2, 3))]


def _config(**overrides: object) -> EmbedderConfig:
    values: dict[str, object] = dict(
        input_size=(112, 112),
        dim=3,
        template=np.zeros((5, 2)),
        mean=(10.0, 20.0, 30.0),
        std=(2.0, 4.0, 5.0),
        channel_order="RGB",
        threshold=0.3,
        max_batch=4,
    )
    values.update(overrides)
    return EmbedderConfig(**values)  # type: ignore[arg-type]


def test_embedder_normalises_pixels_per_channel_in_nchw_order() -> None:
    session = _RecordingSession()
    crops = np.zeros((1, 2, 2, 3), np.uint8)
    crops[..., 0], crops[..., 1], crops[..., 2] = 12, 24, 35
    Embedder(session, _config()).embed(crops)
    np.testing.assert_allclose(session.batches[0][0, :, 0, 0], [1.0, 1.0, 1.0])


def test_embedder_swaps_channels_for_bgr_models() -> None:
    session = _RecordingSession()
    crops = np.zeros((1, 2, 2, 3), np.uint8)
    crops[..., 0] = 200
    Embedder(session, _config(channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1))).embed(crops)
    np.testing.assert_allclose(session.batches[0][0, :, 0, 0], [0.0, 0.0, 200.0])


def test_embedder_splits_large_inputs_into_bounded_batches_and_returns_unit_vectors() -> None:
    session = _RecordingSession()
    crops = np.random.default_rng(0).integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    out = Embedder(session, _config()).embed(crops)
    assert [len(b) for b in session.batches] == [4, 4, 2]
    assert out.shape == (10, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
