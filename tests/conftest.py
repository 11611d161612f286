"""Shared fixtures: where ../shared is, and skips that say why (failures in CI: tests/_ci.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._ci import skip_or_fail_in_ci
from tests._db import postgres_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEBANK_SHARED_DIR", REPO_ROOT.parent / "shared"))
SHARED_MODELS = SHARED / "models"
LFW = SHARED / "data" / "lfw"


def require_shared() -> Path:
    if not (SHARED_MODELS / "retinaface-mobilenet0.25.pth").is_file() or not LFW.is_dir():
        skip_or_fail_in_ci(f"needs ../shared with models and LFW (looked in {SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


def prepared_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared model folder, exported once per test session and shared by every suite."""
    require_shared()
    pytest.importorskip("torch", reason="preparing models needs the train extra (torch)")
    from models.export.prepare import prepare_models

    directory = tmp_path_factory.getbasetemp() / "prepared-models"
    if not (directory / "manifest.toml").is_file():
        directory.mkdir(exist_ok=True)
        prepare_models(model_dir=directory, source_dir=SHARED_MODELS, progress=lambda _: None)
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_model_dir(tmp_path_factory)


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """An empty, never-migrated PostgreSQL database for one test."""
    yield from postgres_or_skip()
