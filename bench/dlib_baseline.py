"""face_recognition (dlib) as the outside baseline: imported on demand, its absence reported, not fatal.

Install (face-recognition pins `dlib`, which would build from source; dlib-bin is the same library prebuilt):
    bash bench/install-peers.sh   # pinned: the peers extra, then face-recognition with --no-deps
"""

from __future__ import annotations

import importlib.resources
import sys
import types
from functools import cache
from typing import Any


def _pkg_resources_stand_in() -> types.ModuleType:
    """face_recognition_models 0.3.0 imports `pkg_resources.resource_filename`, gone from setuptools ≥ 81."""
    module = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib.resources.files(package).joinpath(resource))

    module.resource_filename = resource_filename  # type: ignore[attr-defined]
    return module


@cache
def load() -> tuple[Any, str | None]:
    """(the face_recognition module, None), or (None, why it cannot be used)."""
    stand_in = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        # Only while face_recognition_models resolves its file paths at import; removed right after.
        sys.modules["pkg_resources"] = _pkg_resources_stand_in()
        stand_in = True
    try:
        import face_recognition
    except Exception as exc:  # ImportError, or dlib failing to load a model file
        return None, f"face_recognition not importable ({type(exc).__name__}: {exc}); install: {INSTALL}"
    finally:
        if stand_in:
            sys.modules.pop("pkg_resources", None)
    return face_recognition, None


INSTALL = "bash bench/install-peers.sh (pip install -e .[peers] && pip install --no-deps face-recognition)"


def version() -> str:
    module, _ = load()
    if module is None:
        return "not installed"
    import importlib.metadata

    import dlib

    return f"face_recognition {importlib.metadata.version('face-recognition')}, dlib {dlib.__version__}"
