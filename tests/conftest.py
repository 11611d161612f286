"""Shared fixtures: where ../shared is, and skips that say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEBANK_SHARED_DIR", REPO_ROOT.parent / "shared"))
SHARED_MODELS = SHARED / "models"
LFW = SHARED / "data" / "lfw"


def require_shared() -> Path:
    if not (SHARED_MODELS / "retinaface-mobilenet0.25.pth").is_file() or not LFW.is_dir():
        pytest.skip(f"needs ../shared with models and LFW (looked in {SHARED}); CI always has it")
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()
