"""What thinserve remembers: the Store interface and its SQLite implementation."""

from __future__ import annotations

from .base import (
    AuditEntry,
    ConflictError,
    Desktop,
    NotFoundError,
    Pairing,
    PairingCode,
    SchemaTooNewError,
    SessionRecord,
    Store,
    StoreError,
    Terminal,
    User,
)
from .sqlite import SqliteStore, default_path

__all__ = [
    "AuditEntry",
    "ConflictError",
    "Desktop",
    "NotFoundError",
    "Pairing",
    "PairingCode",
    "SchemaTooNewError",
    "SessionRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "Terminal",
    "User",
    "default_path",
]
