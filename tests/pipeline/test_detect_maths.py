import numpy as np

from service.pipeline.detect import decode_boxes, decode_landmarks, nms, prior_boxes

MIN_SIZES = ((10, 20), (32, 64), (128, 256))
STEPS = (8, 16, 32)


def test_prior_count_is_two_anchors_per_cell_on_each_level() -> None:
    priors = prior_boxes(480, 640, min_sizes=MIN_SIZES, steps=STEPS)
    expected = 2 * (60 * 80 + 30 * 40 + 15 * 20)
    assert priors.shape == (expected, 4)


def test_priors_round_up_cells_for_sizes_not_divisible_by_the_stride() -> None:
    priors = prior_boxes(250, 250, min_sizes=MIN_SIZES, steps=STEPS)
    assert priors.shape[0] == 2 * (32 * 32 + 16 * 16 + 8 * 8)


def test_first_priors_are_the_top_left_cell_with_each_anchor_size() -> None:
    priors = prior_boxes(64, 128, min_sizes=MIN_SIZES, steps=STEPS)
    np.testing.assert_allclose(priors[0], [4 / 128, 4 / 64, 10 / 128, 10 / 64])
    np.testing.assert_allclose(priors[1], [4 / 128, 4 / 64, 20 / 128, 20 / 64])
    # Row-major: the next cell is one step to the right.
    np.testing.assert_allclose(priors[2, :2], [12 / 128, 4 / 64])


def test_zero_offsets_decode_to_the_prior_box_itself() -> None:
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    boxes = decode_boxes(np.zeros((1, 4), np.float32), priors, (0.1, 0.2))
    np.testing.assert_allclose(boxes, [[0.4, 0.3, 0.6, 0.7]], rtol=1e-6)


def test_offsets_shift_the_centre_and_scale_the_size_by_the_variances() -> None:
    priors = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
    loc = np.array([[1.0, -1.0, np.log(2) / 0.2, 0.0]], np.float32)
    (box,) = decode_boxes(loc, priors, (0.1, 0.2))
    cx, cy = 0.5 + 0.1 * 0.2, 0.5 - 0.1 * 0.2
    np.testing.assert_allclose(box, [cx - 0.2, cy - 0.1, cx + 0.2, cy + 0.1], rtol=1e-5)


def test_landmarks_decode_relative_to_the_prior_centre() -> None:
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    landms = np.zeros((1, 10), np.float32)
    landms[0, 2:4] = [1.0, 1.0]
    points = decode_landmarks(landms, priors, (0.1, 0.2)).reshape(5, 2)
    np.testing.assert_allclose(points[0], [0.5, 0.5])
    np.testing.assert_allclose(points[1], [0.5 + 0.1 * 0.2, 0.5 + 0.1 * 0.4], rtol=1e-6)


def test_nms_keeps_the_best_of_overlapping_boxes_and_disjoint_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.1], np.float32)
    kept = nms(boxes, scores, 0.4)
    assert kept.tolist() == [1, 2]


def test_nms_keeps_boxes_whose_overlap_is_below_the_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 1/3
    assert nms(boxes, np.array([0.9, 0.8]), 0.4).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), 0.3).tolist() == [0]
