from __future__ import annotations

import numpy as np
import pytest

from service.storage.repository import from_bytes, to_bytes


def test_an_embedding_survives_bytes_bit_exactly() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1e-45, -3.4e38, 3.4e38, 1.1754944e-38], dtype=np.float32)
    vec = np.concatenate([rng.standard_normal(506).astype(np.float32), special])
    back = from_bytes(to_bytes(vec), 512)
    assert back.dtype == np.float32
    assert back.tobytes() == vec.tobytes()


def test_embeddings_are_stored_little_endian_whatever_the_input_byte_order() -> None:
    big_endian = np.array([1.0, 2.0], dtype=">f4")
    assert to_bytes(big_endian) == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_a_read_back_embedding_is_writable() -> None:
    back = from_bytes(to_bytes(np.ones(4, np.float32)), 4)
    back *= 2  # FAISS normalises in place
    assert back.tolist() == [2.0] * 4


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((2, 4), np.float32),
        np.ones(0, np.float32),
        np.ones(4, np.float64),
        np.array([1.0, np.nan], np.float32),
        np.array([np.inf, 1.0], np.float32),
    ],
    ids=["2-D", "empty", "float64", "nan", "inf"],
)
def test_to_bytes_refuses_what_is_not_a_finite_1d_float32_vector(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        to_bytes(bad)


def test_from_bytes_refuses_a_length_that_does_not_match_dim() -> None:
    with pytest.raises(ValueError, match="expected 16 bytes"):
        from_bytes(b"\0" * 12, 4)
