"""One short-statement connection to the cluster's PostgreSQL database.

Every call is a single statement in autocommit mode, bounded by a connect
timeout and a statement timeout, so a stuck database delays a heartbeat by
seconds, never forever.  A dropped connection is closed and opened again on
the next call; the failed call raises ``ClusterDatabaseError``, whose
message names host:port (never the password) and what to check.

Times come from the database's clock (``NOW``), never the node's: nodes
whose clocks disagree still agree on who has expired.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, LiteralString

from ..store.location import hide_password

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT = 5  # seconds to open a connection
STATEMENT_TIMEOUT_MS = 5000  # the longest one statement may run
# Notice a peer that vanished (cable pulled, host down) within ~15 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}

# The database's clock in epoch seconds, as a double (the tables' REAL columns).
NOW = "extract(epoch from clock_timestamp())::double precision"

Row = tuple[Any, ...]


class ClusterError(Exception):
    """A cluster operation could not be done; the message says why and what to do."""


class ClusterDatabaseError(ClusterError):
    """The database cannot be reached or refused a statement."""


def where(url: str) -> str:
    """host:port and database of ``url``, for messages (no user, no password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "the configured PostgreSQL database"
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or "5432")
    shown = f"[{host}]" if ":" in host else host
    name = info.get("dbname")
    return f"{shown}:{port}" + (f" (database {name})" if name else "")


def connect_options() -> dict[str, Any]:
    """The keyword arguments every cluster connection is opened with."""
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        "application_name": "thinserve-cluster",
        **KEEPALIVES,
    }


def failure(url: str, exc: Exception) -> ClusterDatabaseError:
    """The error to raise for ``exc``: where the database is, its words, what to check."""
    from psycopg import errors

    place = where(url)
    reason = hide_password(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc), url)
    if isinstance(exc, errors.UndefinedTable):
        return ClusterDatabaseError(
            f"the database at {place} has no cluster tables ({reason}); start `thinserve "
            "serve` on it once, which creates them"
        )
    if isinstance(exc, errors.QueryCanceled):
        return ClusterDatabaseError(
            f"the database at {place} took too long to answer ({reason}); check its load"
        )
    return ClusterDatabaseError(
        f"cannot use the database at {place}: {reason}; check that PostgreSQL runs there, "
        "that this machine may connect (pg_hba.conf, firewall) and the user and password "
        "in the database URL"
    )


class Database:
    """A lazily opened connection, safe to share between threads.

    Each ``fetch``/``execute`` runs one statement; a connection that failed
    is dropped so the next call opens a new one.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Row] | None = None
        self._lock = threading.Lock()

    def fetch(self, query: LiteralString, params: Sequence[object] = ()) -> list[Row]:
        """The rows ``query`` gives (empty for a statement without RETURNING)."""
        import psycopg

        with self._lock:
            try:
                conn = self._connection()
                cursor = conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or self._broken():
                    self._drop()
                raise failure(self.url, exc) from None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connection(self) -> psycopg.Connection[Row]:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, **connect_options())
        return self._conn

    def _broken(self) -> bool:
        return self._conn is not None and self._conn.broken

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
