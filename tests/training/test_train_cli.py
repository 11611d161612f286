"""`facebank train` end to end on a tiny slice of celeba-train: crops through the real pipeline, a couple of
steps from the upstream weights, ONNX with parity, card, fragment, registration, then the service loads it."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.training.cli import register
from service.config import Settings
from tests._ci import skip_or_fail_in_ci
from tests.conftest import SHARED, SHARED_MODELS
from tests.evaluation._prepared import prepared_model_dir

pytestmark = pytest.mark.shared

CELEBA = SHARED / "data" / "celeba-train"


def _tiny_dataset(root: Path, identities: int = 5, per_identity: int = 3) -> Path:
    if not CELEBA.is_dir():
        skip_or_fail_in_ci(f"needs {CELEBA} (../shared)")
    for folder in sorted(p for p in CELEBA.iterdir() if p.is_dir())[:identities]:
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:per_identity]:
            (root / folder.name / image.name).symlink_to(image)
    return root


def test_train_writes_a_parity_checked_model_that_the_service_can_load(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(prepared_model_dir(tmp_path_factory), model_dir)
    dataset = _tiny_dataset(tmp_path / "celeba-tiny")
    out = tmp_path / "out"
    parser = argparse.ArgumentParser(prog="facebank")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "train",
            str(dataset),
            "--loss",
            "cosface",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--head-init",
            "centroids",
            "--frozen-blocks",
            "13",
            "--val-fraction",
            "0.4",
            "--init",
            str(SHARED_MODELS / "mobilefacenet.pt"),
            "--out",
            str(out),
            "--name",
            "tiny-cosface",
            "--cache",
            str(tmp_path / "cache"),
            "--register",
            "--json",
            "-q",
        ]
    )
    settings = Settings(model_dir=model_dir, data_dir=tmp_path / "data")
    assert args.handler(args, settings) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["train_identities"] == 3 and metrics["val_identities"] == 2
    assert metrics["no_face"] == 0 and metrics["images"] == 15
    assert np.isfinite([h["mean_loss"] for h in metrics["history"]]).all()
    assert "min cosine 1.0000000" in metrics["parity"] or "min cosine 0.9999" in metrics["parity"]
    for suffix in (".onnx", ".pt", ".md", ".toml"):
        assert (out / f"tiny-cosface{suffix}").is_file(), suffix
    assert (out / "metrics.json").is_file() and (out / "split.json").is_file()
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    card = (out / "tiny-cosface.md").read_text()
    assert "non-commercial" in card and "cosface" in card

    from service.pipeline.decode import decode_image
    from service.pipeline.factory import build_pipeline

    pipeline, models = build_pipeline(settings.model_copy(update={"embedder": "tiny-cosface"}))
    assert models.embedder_tag == "tiny-cosface@1"
    photo = next((dataset / split["val"][0]).iterdir())
    faces = pipeline.analyze(decode_image(photo.read_bytes(), max_pixels=settings.max_image_pixels))
    assert faces and np.isclose(np.linalg.norm(faces[0].embedding), 1.0, atol=1e-4)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="facebank")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


def test_an_edgeface_fine_tune_validated_on_another_set_registers_a_512_d_non_commercial_model(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(prepared_model_dir(tmp_path_factory), model_dir)
    if not (SHARED_MODELS / "edgeface_xs_q.pt").is_file():
        skip_or_fail_in_ci(f"needs {SHARED_MODELS / 'edgeface_xs_q.pt'} (../shared)")
    folders = sorted(p for p in _tiny_dataset(tmp_path / "celeba-tiny").iterdir())
    val = tmp_path / "celeba-val"
    val.mkdir()
    for folder in folders[3:]:  # identity-disjoint: two of the five people validate
        folder.rename(val / folder.name)
    out = tmp_path / "out"
    common = ["--loss", "csoftmax", "--epochs", "1", "--max-steps", "2", "--batch-size", "4"]
    args = _parse(
        [
            str(tmp_path / "celeba-tiny"),
            *common,
            "--base",
            "edgeface-xs",
            "--val-dataset",
            str(val),
            "--head-init",
            "centroids",
            "--frozen-blocks",
            "15",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--register",
            "--json",
            "-q",
        ]
    )
    settings = Settings(model_dir=model_dir, data_dir=tmp_path / "data")
    assert args.handler(args, settings) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "edgeface-xs-celeba-csoftmax" and metrics["base"] == "edgeface-xs"
    assert metrics["train_identities"] == 3 and metrics["val_identities"] == 2 and metrics["val_probes"] == 4
    card = (out / "edgeface-xs-celeba-csoftmax.md").read_text()
    assert "CC-BY-NC-SA-4.0" in card and "every identity of" in card

    from service.runtime.manifest import load_manifest

    entry = load_manifest(model_dir / "manifest.toml").get("edgeface-xs-celeba-csoftmax")
    assert entry.embedder is not None and entry.embedder.dim == 512 and entry.base_model == "edgeface-xs-q@1"
    from service.pipeline.factory import build_pipeline

    pipeline, models = build_pipeline(settings.model_copy(update={"embedder": entry.name}))
    assert models.embedder_tag == "edgeface-xs-celeba-csoftmax@1" and pipeline.embedder.config.dim == 512


def test_initial_weights_of_another_network_are_one_clear_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from models.nets.mobilefacenet import MobileFaceNet

    init = tmp_path / "mobilefacenet.pt"
    torch.save(MobileFaceNet().state_dict(), init)
    (tmp_path / "data" / "someone").mkdir(parents=True)
    out = tmp_path / "out"
    args = _parse([str(tmp_path / "data"), "--base", "edgeface-xs", "--init", str(init), "--out", str(out)])
    assert args.handler(args, Settings(model_dir=tmp_path / "models", data_dir=tmp_path / "fb")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {init}: not an EdgeFace-XS-Q state dict") and "\n" not in err
    assert not out.exists() and not (tmp_path / "models").exists()
