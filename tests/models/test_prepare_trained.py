"""`facebank models prepare` and trained models: registered ones stay while their ONNX matches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from models.export.prepare import ModelSourceError, prepare_models
from service.runtime.manifest import PROJECT_MANIFEST, Manifest, load_manifest, sha256_file, write_manifest
from tests._embedders import FLIPPED, add_flipped_embedder, copy_model_dir
from tests.conftest import SHARED_MODELS


@pytest.fixture
def registered_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A prepared folder where a trained model was registered (as `facebank train --register` does)."""
    target = copy_model_dir(model_dir, tmp_path / "models")
    add_flipped_embedder(target)
    return target


def test_prepare_keeps_a_registered_trained_model_whose_onnx_matches(registered_dir: Path) -> None:
    before = load_manifest(registered_dir / "manifest.toml").get(FLIPPED)
    messages: list[str] = []
    prepare_models(model_dir=registered_dir, source_dir=SHARED_MODELS, progress=messages.append)
    after = load_manifest(registered_dir / "manifest.toml")
    assert after.names() == [*load_manifest(PROJECT_MANIFEST).names(), FLIPPED]
    assert after.get(FLIPPED) == before
    assert any(m.startswith(f"{FLIPPED}@2: kept, a trained model registered here") for m in messages), (
        messages
    )
    assert "registered by `facebank train --register`" in (registered_dir / "manifest.toml").read_text()


def test_prepare_drops_a_registered_trained_model_whose_onnx_changed_or_vanished(
    registered_dir: Path,
) -> None:
    onnx_path = registered_dir / f"{FLIPPED}.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    messages: list[str] = []
    prepare_models(model_dir=registered_dir, source_dir=SHARED_MODELS, progress=messages.append)
    assert FLIPPED not in load_manifest(registered_dir / "manifest.toml")
    assert any("dropped" in m and "does not match its sha256" in m for m in messages), messages

    add_flipped_embedder(registered_dir)
    onnx_path.unlink()
    messages.clear()
    prepare_models(model_dir=registered_dir, source_dir=SHARED_MODELS, progress=messages.append)
    assert FLIPPED not in load_manifest(registered_dir / "manifest.toml")
    assert any("dropped" in m and "is missing" in m for m in messages), messages


def test_a_trained_model_in_the_project_manifest_is_copied_from_the_source_folder(
    registered_dir: Path, tmp_path: Path
) -> None:
    trained = load_manifest(registered_dir / "manifest.toml").get(FLIPPED)
    project = Manifest(
        models=(*load_manifest(PROJECT_MANIFEST).models, replace(trained, export_version=None))
    )
    project_path = write_manifest(project, tmp_path / "project-manifest.toml")
    source_dir = tmp_path / "from"
    source_dir.mkdir()
    (registered_dir / f"{FLIPPED}.onnx").rename(source_dir / f"{FLIPPED}.onnx")
    for upstream in (e.source_file for e in load_manifest(PROJECT_MANIFEST) if e.source_file):
        (source_dir / upstream).symlink_to(SHARED_MODELS / upstream)
    messages: list[str] = []
    prepare_models(
        model_dir=registered_dir, source_dir=source_dir, manifest_path=project_path, progress=messages.append
    )
    copied = registered_dir / f"{FLIPPED}.onnx"
    assert sha256_file(copied) == trained.onnx_sha256
    assert load_manifest(registered_dir / "manifest.toml").get(FLIPPED).onnx_sha256 == trained.onnx_sha256
    assert any("matches its onnx_sha256 (trained model)" in m for m in messages), messages

    # Nowhere to be found: the error says there is nothing to download and how to rebuild it.
    copied.unlink()
    (source_dir / f"{FLIPPED}.onnx").unlink()
    with pytest.raises(ModelSourceError, match="trained model, so there is nothing to download"):
        prepare_models(
            model_dir=registered_dir, source_dir=source_dir, manifest_path=project_path, progress=print
        )
