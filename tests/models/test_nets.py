"""Tests for models.nets with random weights: output shapes, prior order, strict state-dict round trips."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("torch", reason="torch is an optional extra (train)")

import torch

from models.nets import MobileFaceNet, RetinaFace
from models.nets.retinaface import num_priors


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def detector() -> RetinaFace:
    return RetinaFace().eval()


@pytest.fixture(scope="module")
def embedder() -> MobileFaceNet:
    return MobileFaceNet().eval()


@pytest.mark.parametrize(
    ("batch", "height", "width"), [(1, 64, 64), (2, 97, 131), (1, 250, 250), (3, 120, 40)]
)
def test_detector_predicts_two_anchors_per_location_on_three_levels(
    detector: RetinaFace, batch: int, height: int, width: int
) -> None:
    with torch.no_grad():
        loc, conf, landms = detector(torch.randn(batch, 3, height, width))
    priors = sum(-(-height // s) * -(-width // s) * 2 for s in (8, 16, 32))
    assert num_priors(height, width) == priors
    assert loc.shape == (batch, priors, 4)
    assert conf.shape == (batch, priors, 2)
    assert landms.shape == (batch, priors, 10)


def test_detector_confidences_are_softmaxed(detector: RetinaFace) -> None:
    with torch.no_grad():
        _, conf, _ = detector(torch.randn(2, 3, 80, 96))
    assert torch.all(conf >= 0)
    torch.testing.assert_close(conf.sum(-1), torch.ones(conf.shape[:2]))


def test_detector_orders_priors_by_level_then_row_then_column_then_anchor(detector: RetinaFace) -> None:
    """Prior (level, row, col, anchor) sits at offset(level) + (row * cols + col) * 2 + anchor."""
    height, width = 64, 96
    maps: list[torch.Tensor] = []
    hooks = [
        head.get_submodule("conv1x1").register_forward_hook(lambda _m, _i, out: maps.append(out))
        for head in detector.LandmarkHead
    ]
    try:
        with torch.no_grad():
            _, _, landms = detector(torch.randn(1, 3, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    offset = 0
    for level, stride in enumerate((8, 16, 32)):
        raw = maps[level][0]  # (2 anchors * 10, rows, cols)
        rows, cols = raw.shape[-2:]
        assert (rows, cols) == (-(-height // stride), -(-width // stride))
        for row, col, anchor in [(0, 0, 0), (0, 1, 1), (rows - 1, 0, 1), (rows - 1, cols - 1, 0)]:
            index = offset + (row * cols + col) * 2 + anchor
            torch.testing.assert_close(landms[0, index], raw[anchor * 10 : (anchor + 1) * 10, row, col])
        offset += rows * cols * 2
    assert offset == landms.shape[1]


@pytest.mark.parametrize("batch", [1, 7])
def test_embedder_maps_aligned_faces_to_128_numbers(embedder: MobileFaceNet, batch: int) -> None:
    with torch.no_grad():
        out = embedder(torch.randn(batch, 3, 112, 112))
    assert out.shape == (batch, 128)
    assert torch.isfinite(out).all()


def test_embedder_rows_do_not_depend_on_the_rest_of_the_batch(embedder: MobileFaceNet) -> None:
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        together = embedder(x)
        alone = torch.cat([embedder(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory", [RetinaFace, MobileFaceNet], ids=["retinaface", "mobilefacenet"])
def test_state_dict_saved_from_a_fresh_net_loads_strictly(factory: type[torch.nn.Module]) -> None:
    buffer = io.BytesIO()
    torch.save(factory().state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    result = factory().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_strict_loading_rejects_a_state_dict_with_a_missing_key() -> None:
    state = RetinaFace().state_dict()
    del state["ClassHead.0.conv1x1.bias"]
    with pytest.raises(RuntimeError, match=r"ClassHead\.0\.conv1x1\.bias"):
        RetinaFace().load_state_dict(state, strict=True)


def test_nets_have_the_upstream_parameter_counts() -> None:
    """Sizes of the upstream weights: 300 RetinaFace tensors, MobileFaceNet's 0.99 M parameters."""
    assert len(RetinaFace().state_dict()) == 300
    assert sum(p.numel() for p in MobileFaceNet().parameters()) == 999_936
