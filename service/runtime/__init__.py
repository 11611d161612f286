"""The one place that creates onnxruntime sessions and reads the prepared model manifest.

Attributes load on first use, so that `service.runtime.stages` and `service.runtime.manifest` (what the
pipeline and the tools that only read the manifest need) import without onnxruntime.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.runtime.models import LoadedModels, ModelLoadError, load_models
    from service.runtime.sessions import create_session

__all__ = ["LoadedModels", "ModelLoadError", "create_session", "load_models"]

_HOMES = {
    "LoadedModels": "service.runtime.models",
    "ModelLoadError": "service.runtime.models",
    "load_models": "service.runtime.models",
    "create_session": "service.runtime.sessions",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
