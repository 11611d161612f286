"""Models prepared once per test session from ../shared, shared by the evaluation and training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED_MODELS, require_shared


def prepared_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared model folder (exported once per session; skips with the reason when ../shared is absent)."""
    require_shared()
    pytest.importorskip("torch", reason="preparing models needs the train extra (torch)")
    from models.export.prepare import prepare_models

    directory = tmp_path_factory.getbasetemp() / "prepared-models"
    if not (directory / "manifest.toml").is_file():
        directory.mkdir(exist_ok=True)
        prepare_models(model_dir=directory, source_dir=SHARED_MODELS, progress=lambda _: None)
    return directory
