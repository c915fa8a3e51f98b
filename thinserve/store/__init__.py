"""What thinserve remembers: the Store interface and its SQLite implementation."""

from __future__ import annotations

from .base import (
    AuditEntry,
    CannotOpenError,
    ConflictError,
    CorruptError,
    Desktop,
    DiskFullError,
    LockedError,
    NotFoundError,
    Pairing,
    PairingCode,
    ReadOnlyError,
    SchemaTooNewError,
    SessionRecord,
    Store,
    StoreError,
    StoreFault,
    StoreIOError,
    Terminal,
    User,
)
from .sqlite import SqliteStore, default_path

__all__ = [
    "AuditEntry",
    "CannotOpenError",
    "ConflictError",
    "CorruptError",
    "Desktop",
    "DiskFullError",
    "LockedError",
    "NotFoundError",
    "Pairing",
    "PairingCode",
    "ReadOnlyError",
    "SchemaTooNewError",
    "SessionRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreFault",
    "StoreIOError",
    "Terminal",
    "User",
    "default_path",
]
