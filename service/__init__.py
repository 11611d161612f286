"""facebank: face retrieval service (detection → alignment → embedding → search)."""

__version__ = "0.1.0"
