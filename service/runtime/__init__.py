"""The one place that creates onnxruntime sessions and reads the prepared model manifest."""

from service.runtime.models import LoadedModels, ModelLoadError, load_models
from service.runtime.sessions import create_session

__all__ = ["LoadedModels", "ModelLoadError", "create_session", "load_models"]
