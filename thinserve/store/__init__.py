"""What thinserve remembers: the Store interface, on SQLite or PostgreSQL.

``open_store(location)`` opens the store ``[server] database`` names (a
path or a URL, see location.py); ``describe_location`` is that location
without its password, for logs.  PostgresStore is imported only when a
PostgreSQL URL is opened.
"""

from __future__ import annotations

from .base import (
    AuditEntry,
    CannotOpenError,
    ConflictError,
    CorruptError,
    Desktop,
    DiskFullError,
    LockedError,
    Login,
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
    UnreachableError,
    User,
)
from .location import describe_location, is_postgres, local_file, open_store
from .sqlite import SqliteStore, default_path

__all__ = [
    "AuditEntry",
    "CannotOpenError",
    "ConflictError",
    "CorruptError",
    "Desktop",
    "DiskFullError",
    "LockedError",
    "Login",
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
    "UnreachableError",
    "User",
    "default_path",
    "describe_location",
    "is_postgres",
    "local_file",
    "open_store",
]
