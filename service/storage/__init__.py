"""SQL storage: the source of truth for identities and face embeddings.

Imports nothing else from `service/`. Repository functions live in `service.storage.repository`
(use it as a module: `from service.storage import repository`).
"""

from service.storage.engine import make_engine, make_session_factory
from service.storage.migrate import current_revision, head_revision, upgrade_to_head
from service.storage.repository import UNSET, Conflict, InvalidCursor, StorageError
from service.storage.tables import Base, Face, Identity

__all__ = [
    "UNSET",
    "Base",
    "Conflict",
    "Face",
    "Identity",
    "InvalidCursor",
    "StorageError",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade_to_head",
]
