"""Training on tiny generated data: the split, a few steps with each loss, freezing, head init, export."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the train extra (torch)")

import torch

from models.export.onnx_export import WeightFileError
from models.losses import COCOLoss, CosFaceLoss, CSoftmaxLoss, SoftmaxLoss
from models.nets.edgeface import EdgeFace
from models.nets.mobilefacenet import MobileFaceNet
from models.training.bases import get_base
from models.training.config import LOSSES, TrainConfig
from models.training.data import CropSet, split_identities, validation_top1
from models.training.publish import (
    export_trained,
    register_in_model_dir,
    trained_entry,
    write_fragment,
)
from models.training.run import run_training
from models.training.train import (
    embed,
    init_head_from_centroids,
    make_loss,
    train_embedder,
)
from service.runtime.manifest import PROJECT_MANIFEST, load_manifest, sha256_file, write_manifest


def _crops(identities: int = 3, per_identity: int = 4, seed: int = 0) -> CropSet:
    """Each identity is a smooth colour pattern; its photos are that pattern plus noise."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for i in range(identities):
        coarse = rng.uniform(0, 255, size=(8, 8, 3))
        pattern = np.kron(coarse, np.ones((14, 14, 1)))
        for _ in range(per_identity):
            rows.append(np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255).astype(np.uint8))
            names.append(f"id{i}")
    return CropSet(
        crops=np.stack(rows),
        identities=tuple(names),
        paths=tuple(f"{n}/{j}.jpg" for j, n in enumerate(names)),
    )


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        dataset=tmp_path / "data",
        out=tmp_path / "out",
        epochs=1,
        batch_size=12,
        lr=1e-3,
        head_lr=1e-2,
        frozen_blocks=13,
        threads=2,
        max_steps=6,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_the_split_is_identity_disjoint_complete_and_seeded() -> None:
    names = [f"p{i:03d}" for i in range(209)]
    split = split_identities(names * 3, val_fraction=0.2, seed=0)
    assert not set(split.train) & set(split.val)
    assert set(split.train) | set(split.val) == set(names)
    assert len(split.val) == 42
    assert split == split_identities(list(reversed(names)), val_fraction=0.2, seed=0)
    assert split != split_identities(names, val_fraction=0.2, seed=1)


def test_crop_subsets_keep_only_the_asked_identities() -> None:
    crops = _crops()
    split = split_identities(crops.identities, val_fraction=0.34, seed=0)
    train, val = crops.subset(split.train), crops.subset(split.val)
    assert len(train) + len(val) == len(crops)
    assert not set(train.identities) & set(val.identities)


def test_the_config_refuses_lfw_and_unknown_losses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never train"):
        TrainConfig(dataset=Path("../shared/data/lfw"), out=tmp_path)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(dataset=tmp_path, out=tmp_path, loss="arcface")  # type: ignore[arg-type]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_a_few_finite_steps_and_lowers_its_loss(tmp_path: Path, loss: str) -> None:
    torch.manual_seed(0)
    crops = _crops()
    config = _config(tmp_path, loss=loss, epochs=4, max_steps=4)
    result = train_embedder(config, crops, crops, net=MobileFaceNet())
    losses = result.step_losses
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0]
    assert 0.0 <= result.final.top1 <= 1.0


def test_a_frozen_trunk_stays_put_and_the_top_moves(tmp_path: Path) -> None:
    net = MobileFaceNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_embedder(_config(tmp_path, max_steps=2), _crops(), None, net=net)
    after = net.state_dict()
    assert torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])
    assert torch.equal(before["features.12.conv.3.running_mean"], after["features.12.conv.3.running_mean"])
    assert not torch.equal(before["conv3.weight"], after["conv3.weight"])


def test_full_fine_tuning_moves_the_first_layer(tmp_path: Path) -> None:
    net = MobileFaceNet()
    before = net.conv1[0].weight.detach().clone()
    train_embedder(_config(tmp_path, frozen_blocks=0, max_steps=1, batch_size=4), _crops(2, 2), None, net=net)
    assert not torch.equal(before, net.conv1[0].weight)


def test_trunk_and_top_compose_to_the_whole_network() -> None:
    net = MobileFaceNet().eval()
    trunk, top = get_base("mobilefacenet").split(net, 13)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(top(trunk(x)), net(x), atol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_centroid_init_points_every_class_vector_at_its_class_mean(tmp_path: Path, loss: str) -> None:
    head = make_loss(_config(tmp_path, loss=loss), num_classes=2, in_features=3)
    embeddings = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0.6, 0.8]], np.float32)
    init_head_from_centroids(head, embeddings, np.array([0, 0, 1, 1]))
    if isinstance(head, CosFaceLoss):
        vectors = head.head.weight
    elif isinstance(head, COCOLoss):
        vectors = head.centroids
    else:
        assert isinstance(head, SoftmaxLoss | CSoftmaxLoss)
        vectors = head.classifier.weight
    expected = np.array([[0.9, 0.3, 0], [0, 0.3, 0.9]]) / np.linalg.norm([0.9, 0.3, 0])
    assert np.allclose(vectors.detach().numpy(), expected, atol=1e-6)


def test_validation_top1_uses_the_first_image_of_each_identity_as_gallery() -> None:
    vectors = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], np.float32)
    # a's probe (row 2) looks like b's gallery photo: a miss; b's probe (row 3) looks like a's: a miss.
    assert validation_top1(vectors, ["a", "b", "a", "b"]).top1 == 0.0
    assert validation_top1(vectors, ["a", "b", "b", "a"]).top1 == 1.0


def test_a_trained_model_exports_with_parity_and_registers_in_a_model_dir(tmp_path: Path) -> None:
    crops = _crops()
    net = MobileFaceNet()
    train_embedder(_config(tmp_path, max_steps=2), crops, None, net=net)
    exported = export_trained(net, "tiny-test", tmp_path / "out", crops.crops)
    assert exported.parity.min_cosine is not None and exported.parity.min_cosine > 0.9999

    entry = trained_entry(
        "tiny-test", weights=exported.weights, threshold=0.3, provenance="test", card="c.md"
    )
    fragment = load_manifest(write_fragment(entry, tmp_path / "tiny-test.toml"))
    assert fragment.get("tiny-test").embedder is not None
    assert fragment.get("tiny-test").licence.startswith("research and non-commercial use only")

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    write_manifest(load_manifest(PROJECT_MANIFEST), model_dir / "manifest.toml")
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    register_in_model_dir(entry, exported, card, model_dir)
    registered = load_manifest(model_dir / "manifest.toml").get("tiny-test")
    assert registered.onnx_sha256 == sha256_file(model_dir / "tiny-test.onnx")
    assert "mobilefacenet" in load_manifest(model_dir / "manifest.toml")

    # The service's own embedder code on the registered graph agrees with PyTorch.
    from service.pipeline.embed import Embedder
    from service.runtime.models import embedder_config
    from service.runtime.sessions import create_session

    embedder = Embedder(create_session(model_dir / "tiny-test.onnx"), embedder_config(registered))
    served = embedder.embed(crops.crops)
    reference = embed(net, crops.crops, get_base("mobilefacenet").preprocess())
    assert np.min(np.sum(served * reference, axis=1)) > 0.9999


# EdgeFace-XS as the base: the same training code, its own split, dimension, preprocessing and licence.


@pytest.mark.parametrize("frozen", [0, 3, 15, 17, 18])
def test_edgeface_trunk_and_top_compose_to_the_whole_network(frozen: int) -> None:
    torch.manual_seed(0)
    net = EdgeFace("xs").eval()
    trunk, top = get_base("edgeface-xs").split(net, frozen)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(top(trunk(x)), net(x), atol=1e-5)
    # every parameter is in exactly one half
    assert {id(p) for p in trunk.parameters()}.isdisjoint(id(p) for p in top.parameters())
    assert len(list(trunk.parameters())) + len(list(top.parameters())) == len(list(net.parameters()))


def test_the_config_checks_frozen_blocks_against_the_base(tmp_path: Path) -> None:
    TrainConfig(dataset=tmp_path, out=tmp_path, base="edgeface-xs", frozen_blocks=18)
    with pytest.raises(ValueError, match=r"frozen_blocks must be in \[0, 15\] \(mobilefacenet has 15\)"):
        TrainConfig(dataset=tmp_path, out=tmp_path, frozen_blocks=16)
    with pytest.raises(ValueError, match="base must be one of mobilefacenet, edgeface-xs"):
        TrainConfig(dataset=tmp_path, out=tmp_path, base="resnet")  # type: ignore[arg-type]
    assert (
        TrainConfig(dataset=tmp_path, out=tmp_path, base="edgeface-xs").model_name
        == "edgeface-xs-celeba-cosface"
    )
    assert TrainConfig(dataset=tmp_path, out=tmp_path).init_path.name == "mobilefacenet.pt"


def test_an_edgeface_top_trains_on_a_frozen_trunk_and_exports_as_a_512_d_non_commercial_model(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    crops = _crops()
    net = EdgeFace("xs")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = _config(tmp_path, base="edgeface-xs", frozen_blocks=15, loss="cosface", max_steps=3)
    result = train_embedder(config, crops, crops, net=net, cache_dir=tmp_path / "cache")
    after = net.state_dict()
    assert torch.equal(before["model.stem.0.weight"], after["model.stem.0.weight"])
    assert torch.equal(before["model.stages.2.blocks.8.gamma"], after["model.stages.2.blocks.8.gamma"])
    assert not torch.equal(before["model.head.fc.weight"], after["model.head.fc.weight"])
    assert result.loss.head.weight.shape == (3, 512)  # type: ignore[union-attr]
    # the trunk's outputs were cached, plain and mirrored (validation, the same crops, shares the plain file)
    assert len(list((tmp_path / "cache" / "trunk").glob("*.npy"))) == 2

    base = get_base("edgeface-xs")
    exported = export_trained(net, "tiny-edge", tmp_path / "out", crops.crops, base)
    assert exported.parity.min_cosine is not None and exported.parity.min_cosine > 0.9999
    entry = trained_entry(
        "tiny-edge", weights=exported.weights, threshold=0.3, provenance="test", card="c.md", base=base
    )
    assert entry.embedder is not None and entry.embedder.dim == 512
    assert entry.base_model == "edgeface-xs-q@1" and entry.preprocess == base.preprocess()
    assert entry.licence.startswith("CC-BY-NC-SA-4.0, non-commercial use only")
    # the saved fine-tune reloads strictly as the base network
    reloaded = base.build(exported.weights)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), net.eval()(x), atol=1e-5)


def test_a_validation_set_sharing_an_identity_with_the_training_set_is_refused(tmp_path: Path) -> None:
    init = tmp_path / "init.pt"
    torch.save(MobileFaceNet().state_dict(), init)
    config = _config(tmp_path, init_weights=init, val_dataset=tmp_path / "val")
    with pytest.raises(ValueError, match=r"share 1 identity folder names \(e\.g\. id0\): validation must be"):
        run_training(
            config,
            None,
            cache_dir=None,
            crops=_crops(),
            val_crops=_crops(1).subset(["id0"]),  # type: ignore[arg-type]
        )


def test_initial_weights_of_another_network_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    init = tmp_path / "mobilefacenet.pt"
    torch.save(MobileFaceNet().state_dict(), init)
    config = _config(tmp_path, base="edgeface-xs", frozen_blocks=15, init_weights=init)
    with pytest.raises(WeightFileError, match=re.escape(f"{init}: not an EdgeFace-XS-Q state dict")):
        run_training(config, None, cache_dir=None, crops=_crops())  # type: ignore[arg-type]
    assert not config.out.exists()


def test_max_identities_trains_on_the_first_people_by_name_and_validates_on_the_other_set() -> None:
    from models.training.data import train_and_validation

    crops = _crops(identities=5)
    val = _crops(identities=2, seed=1)
    val = CropSet(crops=val.crops, identities=tuple(f"v{i}" for i in val.identities), paths=val.paths)
    split, train, held_out = train_and_validation(crops, val, val_fraction=0.2, seed=0, max_identities=3)
    assert split.train == ("id0", "id1", "id2") and set(train.identities) == {"id0", "id1", "id2"}
    assert held_out is val and split.val == ("vid0", "vid1")
    with pytest.raises(ValueError, match="max_identities must be at least 2"):
        TrainConfig(dataset=Path("data"), out=Path("out"), max_identities=1)
