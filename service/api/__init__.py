"""The REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `service.api.schemas` (used by the Python client) does not load the app and its models.
    if name == "create_app":
        from service.api.app import create_app

        return create_app
    raise AttributeError(name)
