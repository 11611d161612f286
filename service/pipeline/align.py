"""Similarity-transform alignment of 5 landmarks onto the embedder's template."""

from __future__ import annotations

import numpy as np
from PIL import Image


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping source points onto target (Umeyama).

    Returns a 2×3 matrix M with target ≈ M @ [x, y, 1].
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    covariance = dst.T @ src / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1.0
    rotation = u @ reflection @ vt
    src_var = (src**2).sum() / len(source)
    scale = float(np.trace(np.diag(singular) @ reflection) / src_var) if src_var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(
    image: Image.Image, landmarks: np.ndarray, template: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Warp the face so its landmarks land on `template`; returns (H, W, 3) uint8 RGB."""
    forward = np.vstack([similarity_transform(landmarks, template), [0.0, 0.0, 1.0]])
    # Pillow's affine transform maps output pixels back to input pixels, so it wants the inverse.
    inverse = np.linalg.inv(forward)[:2].ravel()
    warped = image.transform(
        size, Image.Transform.AFFINE, data=tuple(inverse), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)
