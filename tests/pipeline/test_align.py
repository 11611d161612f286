import numpy as np
from PIL import Image

from service.pipeline.align import align_face, similarity_transform

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    source = TEMPLATE * 1.7 @ _rotation(25).T + [40.0, -12.0]
    matrix = similarity_transform(source, TEMPLATE)
    mapped = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(matrix[:, :2]), (1 / 1.7) ** 2, rtol=1e-9)


def test_similarity_transform_never_mirrors_the_face() -> None:
    mirrored = TEMPLATE * [-1.0, 1.0]
    matrix = similarity_transform(mirrored, TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_noisy_landmarks_give_the_least_squares_fit() -> None:
    rng = np.random.default_rng(0)
    source = TEMPLATE * 2.0 + rng.normal(0, 0.5, TEMPLATE.shape)
    matrix = similarity_transform(source, TEMPLATE)
    residual = np.linalg.norm(source @ matrix[:, :2].T + matrix[:, 2] - TEMPLATE, axis=1)
    assert residual.max() < 1.0


def test_align_face_moves_marked_landmarks_onto_the_template() -> None:
    # Paint a bright dot at each landmark of a shifted, scaled, rotated face in a bigger image.
    source = TEMPLATE * 1.5 @ _rotation(-15).T + [60.0, 80.0]
    canvas = np.zeros((300, 300, 3), np.uint8)
    for x, y in np.rint(source).astype(int):
        canvas[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_face(Image.fromarray(canvas), source, TEMPLATE, (112, 112))
    assert crop.shape == (112, 112, 3)
    for x, y in np.rint(TEMPLATE).astype(int):
        patch = crop[y - 1 : y + 2, x - 1 : x + 2]
        assert patch.mean() > 150, (x, y)
