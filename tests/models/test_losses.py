"""Tests for models.losses: shapes, gradients, margin arithmetic and centre updates."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

pytest.importorskip("torch", reason="the training losses need torch (the 'train' extra)")

import torch
import torch.nn.functional as F

from models.losses import (
    CenterLoss,
    COCOLoss,
    CosFaceLoss,
    CosineHead,
    CSoftmaxLoss,
    SoftmaxLoss,
    coco_alpha,
    cosface_logits,
)

DIM, CLASSES, BATCH = 6, 5, 12

LossFn = SoftmaxLoss | CosFaceLoss | COCOLoss | CSoftmaxLoss | CenterLoss

LOSSES: dict[str, Callable[[], LossFn]] = {
    "softmax": lambda: SoftmaxLoss(DIM, CLASSES),
    "cosface": lambda: CosFaceLoss(DIM, CLASSES),
    "coco": lambda: COCOLoss(DIM, CLASSES),
    "csoftmax": lambda: CSoftmaxLoss(DIM, CLASSES),
    "center": lambda: CenterLoss(DIM, CLASSES),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def simplex(num_classes: int) -> torch.Tensor:
    """Unit vectors of a regular simplex in R^K: every pair has cosine −1/(K − 1)."""
    vertices = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return F.normalize(vertices, dim=1)


# --- every loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_returns_a_scalar_with_finite_gradients_for_features_and_parameters(name: str) -> None:
    loss_fn = LOSSES[name]()
    features = torch.randn(BATCH, DIM, requires_grad=True)
    labels = torch.randint(0, CLASSES, (BATCH,))

    loss = loss_fn(features, labels)
    loss.backward()

    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert features.grad.abs().sum() > 0
    for param_name, param in loss_fn.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_stays_finite_for_zero_and_huge_features(name: str) -> None:
    loss_fn = LOSSES[name]()
    features = torch.randn(BATCH, DIM)
    features[0] = 0.0
    features[1] *= 1e4
    features.requires_grad_(True)
    labels = torch.randint(0, CLASSES, (BATCH,))

    loss = loss_fn(features, labels)
    loss.backward()

    assert torch.isfinite(loss)
    assert features.grad is not None and torch.isfinite(features.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_predicts_with_logits_of_shape_batch_by_classes(name: str) -> None:
    loss_fn = LOSSES[name]()
    assert loss_fn.logits(torch.randn(BATCH, DIM)).shape == (BATCH, CLASSES)


# --- softmax and the cosine head ----------------------------------------------------------------


def test_softmax_loss_is_the_cross_entropy_of_its_linear_classifier() -> None:
    loss_fn = SoftmaxLoss(2, 2, bias=False)
    with torch.no_grad():
        loss_fn.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss = loss_fn(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(1.0 - 2.0)), rel=1e-6)


def test_cosine_head_returns_cosines_whatever_the_norms() -> None:
    head = CosineHead(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[5.0, 0.0], [0.0, 0.1]]))
    cosines = head(torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(cosines, torch.full((1, 2), 1 / math.sqrt(2)))


# --- CosFace ------------------------------------------------------------------------------------


def test_cosface_defaults_are_the_papers_scale_64_and_margin_0_35() -> None:
    loss_fn = CosFaceLoss(DIM, CLASSES)
    assert (loss_fn.scale, loss_fn.margin) == (64.0, 0.35)


def test_cosface_true_logit_is_s_times_1_minus_m_for_a_feature_equal_to_its_class_weight() -> None:
    loss_fn = CosFaceLoss(3, 3)
    with torch.no_grad():
        loss_fn.head.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]))
    features = loss_fn.head.weight.detach()[1:2].clone()

    bent = cosface_logits(loss_fn.head(features), torch.tensor([1]), scale=64.0, margin=0.35)

    torch.testing.assert_close(bent, torch.tensor([[0.0, 64.0 * (1 - 0.35), 0.0]]), rtol=0, atol=1e-5)


def test_cosface_loss_matches_a_hand_computed_cross_entropy() -> None:
    loss_fn = CosFaceLoss(2, 2, scale=2.0, margin=0.25)
    with torch.no_grad():
        loss_fn.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # Feature on the bisector: both cosines are 1/√2, so logits are [2(1/√2 − 0.25), 2/√2]
    # and the loss is log(1 + exp(2·0.25)).
    on_bisector = loss_fn(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    # Feature on its class weight: logits [2(1 − 0.25), 0], loss log(1 + exp(−1.5)).
    on_weight = loss_fn(torch.tensor([[4.0, 0.0]]), torch.tensor([0]))

    assert on_bisector.item() == pytest.approx(math.log(1 + math.exp(0.5)), rel=1e-6)
    assert on_weight.item() == pytest.approx(math.log(1 + math.exp(-1.5)), rel=1e-6)


def test_cosface_margin_only_touches_the_true_class_and_prediction_uses_no_margin() -> None:
    cosine = torch.tensor([[0.2, 0.9, -0.4]])
    bent = cosface_logits(cosine, torch.tensor([1]), scale=10.0, margin=0.3)
    torch.testing.assert_close(bent, torch.tensor([[2.0, 6.0, -4.0]]))

    loss_fn = CosFaceLoss(DIM, CLASSES, scale=10.0, margin=0.3)
    features = torch.randn(BATCH, DIM)
    torch.testing.assert_close(loss_fn.logits(features), 10.0 * loss_fn.head(features))


def test_cosface_with_a_margin_costs_more_than_without() -> None:
    features, labels = torch.randn(BATCH, DIM), torch.randint(0, CLASSES, (BATCH,))
    with_margin = CosFaceLoss(DIM, CLASSES, scale=16.0, margin=0.35)
    without = CosFaceLoss(DIM, CLASSES, scale=16.0, margin=0.0)
    without.load_state_dict(with_margin.state_dict())
    assert with_margin(features, labels) > without(features, labels)


# --- COCO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_classes", "epsilon", "expected"),
    [
        (2, 0.9, 0.5 * math.log(9)),  # K = 2: ½·log(ε/(1 − ε))
        (10, 0.9, 0.9 * math.log(81)),
        (1000, 0.99, 0.999 * math.log(999 * 99)),
    ],
)
def test_coco_alpha_follows_the_simplex_lower_bound_formula(
    num_classes: int, epsilon: float, expected: float
) -> None:
    assert coco_alpha(num_classes, epsilon) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("num_classes", "epsilon"), [(3, 0.8), (10, 0.9), (50, 0.99)])
def test_coco_alpha_makes_a_sample_on_simplex_centroids_reach_probability_epsilon(
    num_classes: int, epsilon: float
) -> None:
    centroids = simplex(num_classes)
    alpha = coco_alpha(num_classes, epsilon)
    probabilities = torch.softmax(alpha * centroids @ centroids.T, dim=1)
    expected = torch.full((num_classes,), epsilon, dtype=torch.float64)
    torch.testing.assert_close(probabilities.diagonal(), expected)


def test_coco_alpha_grows_with_the_number_of_classes() -> None:
    alphas = [coco_alpha(k, 0.9) for k in (10, 100, 1000, 10000)]
    assert alphas == sorted(alphas)


@pytest.mark.parametrize(("num_classes", "epsilon"), [(1, 0.9), (10, 0.1), (10, 1.0), (4, 0.25)])
def test_coco_alpha_refuses_a_target_at_or_below_chance_or_a_single_class(
    num_classes: int, epsilon: float
) -> None:
    with pytest.raises(ValueError):
        coco_alpha(num_classes, epsilon)


def test_coco_uses_the_formula_by_default_and_an_explicit_alpha_when_given() -> None:
    assert COCOLoss(DIM, 10).alpha == pytest.approx(coco_alpha(10, 0.9))
    assert COCOLoss(DIM, 10, epsilon=0.99).alpha == pytest.approx(coco_alpha(10, 0.99))
    assert COCOLoss(DIM, 10, alpha=2.0).alpha == 2.0


def test_coco_loss_is_cross_entropy_of_alpha_scaled_cosines_to_the_centroids() -> None:
    loss_fn = COCOLoss(2, 2, alpha=3.0)
    with torch.no_grad():
        loss_fn.centroids.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.5]]))
    features = torch.tensor([[2.0, 2.0 * math.sqrt(3)]])  # 60° from class 0, 30° from class 1

    torch.testing.assert_close(loss_fn.logits(features), torch.tensor([[1.5, 1.5 * math.sqrt(3)]]))
    expected = math.log(1 + math.exp(1.5 * math.sqrt(3) - 1.5))
    assert loss_fn(features, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_coco_centroids_are_parameters_that_sgd_moves() -> None:
    loss_fn = COCOLoss(DIM, CLASSES)
    before = loss_fn.centroids.detach().clone()
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    loss_fn(torch.randn(BATCH, DIM), torch.randint(0, CLASSES, (BATCH,))).backward()
    optimiser.step()
    assert not torch.equal(before, loss_fn.centroids.detach())


def test_coco_batch_update_moves_present_centroids_by_momentum_and_leaves_absent_ones() -> None:
    loss_fn = COCOLoss(2, 3, alpha=1.0)
    with torch.no_grad():
        loss_fn.centroids.copy_(torch.tensor([[0.0, 4.0], [3.0, 0.0], [-1.0, -1.0]]))
    # Class 0: directions (1, 0) and (0, 1) average to (0.5, 0.5); class 2 is absent.
    features = torch.tensor([[5.0, 0.0], [0.0, 2.0], [0.0, -7.0]])
    labels = torch.tensor([0, 0, 1])

    loss_fn.update_centroids_from_batch(features, labels, momentum=0.5)

    expected = torch.tensor([[0.25, 0.75], [0.5, -0.5], [-1.0, -1.0]])
    torch.testing.assert_close(loss_fn.centroids.detach(), expected)
    assert loss_fn.centroids.requires_grad and loss_fn.centroids.grad_fn is None


def test_coco_batch_update_with_zero_momentum_sets_centroids_to_the_class_mean_direction() -> None:
    loss_fn = COCOLoss(DIM, CLASSES)
    features = torch.randn(40, DIM)
    labels = torch.arange(40) % CLASSES
    loss_fn.update_centroids_from_batch(features, labels, momentum=0.0)
    for k in range(CLASSES):
        mean_direction = F.normalize(features[labels == k], dim=1).mean(dim=0)
        torch.testing.assert_close(loss_fn.centroids[k].detach(), mean_direction)


# --- C-Softmax ----------------------------------------------------------------------------------


def make_csoftmax_with_centres() -> CSoftmaxLoss:
    loss_fn = CSoftmaxLoss(2, 2, floor=0.05)
    loss_fn.centres.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss_fn.seen.fill_(True)
    return loss_fn


def test_csoftmax_weighs_an_easy_sample_more_than_a_hard_one_with_batch_mean_one() -> None:
    loss_fn = make_csoftmax_with_centres()
    features = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # on, 45° off, 90° off centre 0
    weights = loss_fn.sample_weights(features, torch.tensor([0, 0, 0]))

    assert weights[0] > weights[1] > weights[2]
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    raw = torch.tensor([1.0, 1 / math.sqrt(2), 0.05])  # cos, with 0 clamped to the floor
    torch.testing.assert_close(weights, raw / raw.mean())


def test_csoftmax_clamps_samples_facing_away_from_their_centre_to_the_floor() -> None:
    loss_fn = make_csoftmax_with_centres()
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    weights = loss_fn.sample_weights(features, torch.tensor([0, 0]))
    assert (weights > 0).all()
    assert (weights[1] / weights[0]).item() == pytest.approx(0.05)


def test_csoftmax_weights_are_detached_and_the_loss_is_the_weighted_mean_cross_entropy() -> None:
    loss_fn = make_csoftmax_with_centres().eval()
    features = torch.randn(BATCH, 2, requires_grad=True)
    labels = torch.randint(0, 2, (BATCH,))

    weights = loss_fn.sample_weights(features, labels)
    loss = loss_fn(features, labels)

    assert not weights.requires_grad
    expected = (weights * F.cross_entropy(loss_fn.logits(features), labels, reduction="none")).mean()
    torch.testing.assert_close(loss, expected)


def test_csoftmax_centres_start_at_the_first_batch_mean_then_follow_momentum_in_training_only() -> None:
    loss_fn = CSoftmaxLoss(2, 3, momentum=0.75)
    labels = torch.tensor([0, 0])
    loss_fn(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), labels)
    torch.testing.assert_close(loss_fn.centres[0], torch.tensor([0.5, 0.5]))
    assert loss_fn.seen.tolist() == [True, False, False]

    loss_fn(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), labels)
    torch.testing.assert_close(loss_fn.centres[0], torch.tensor([0.375, 0.625]))

    loss_fn.eval()
    loss_fn(torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))
    torch.testing.assert_close(loss_fn.centres[0], torch.tensor([0.375, 0.625]))
    torch.testing.assert_close(loss_fn.centres[1:], torch.zeros(2, 2))


def test_csoftmax_gives_unseen_classes_a_neutral_weight() -> None:
    loss_fn = CSoftmaxLoss(2, 2)
    weights = loss_fn.sample_weights(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(weights, torch.ones(4))


# --- center loss --------------------------------------------------------------------------------


def test_center_loss_moves_centres_by_wen_et_al_update_rule() -> None:
    loss_fn = CenterLoss(2, 3, alpha=0.5)
    features = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, -3.0]])
    labels = torch.tensor([0, 0, 1])

    loss_fn(features, labels)

    # Class 0: Δc = ((0 − 2) + (0 − 4)) / (1 + 2) = −2, c ← 0 − 0.5·(−2) = 1.
    # Class 1: Δc = (0 − (−3)) / (1 + 1) = 1.5, c ← 0 − 0.5·1.5 = −0.75. Class 2 is absent.
    torch.testing.assert_close(loss_fn.centres, torch.tensor([[1.0, 0.0], [0.0, -0.75], [0.0, 0.0]]))


def test_center_loss_adds_half_the_squared_distance_to_the_centre_before_the_update() -> None:
    loss_fn = CenterLoss(2, 2, center_weight=0.1)
    loss_fn.centres.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    features = torch.tensor([[1.0, 3.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1])
    softmax = F.cross_entropy(loss_fn.logits(features), labels)

    loss = loss_fn(features, labels)

    # ½‖(0, 2)‖² = 2 and ½‖(3, 0)‖² = 4.5, averaged: 3.25.
    torch.testing.assert_close(loss, softmax + 0.1 * 3.25)


def test_center_loss_keeps_its_centres_in_eval_mode() -> None:
    loss_fn = CenterLoss(DIM, CLASSES).eval()
    loss_fn(torch.randn(BATCH, DIM), torch.randint(0, CLASSES, (BATCH,)))
    assert torch.equal(loss_fn.centres, torch.zeros(CLASSES, DIM))
