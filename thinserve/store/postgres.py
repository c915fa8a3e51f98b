"""The Store on PostgreSQL (psycopg 3), for several nodes sharing one database.

One synchronous connection, used from the reactor thread as SqliteStore's
is: every call is one short transaction.  A dead or unreachable server must
not hang the reactor, so connecting gives up after ``connect_timeout`` and
each statement after ``statement_timeout`` (5 s each by default), and TCP
keepalives and a TCP user timeout notice a peer that vanished.

Semantics follow SqliteStore (docs/broker.md): ``atomic()`` nests, and a
write transaction takes a transaction-scoped advisory lock first, so writers
take turns across nodes as they do on one SQLite file; a write that breaks
a uniqueness or reference rule raises ConflictError and leaves the rest of
the transaction usable (it runs under a savepoint).  Each write that changes
what a terminal should show sends ``NOTIFY thinserve`` in its transaction
(thinserve.store.changes), so other nodes hear of it once it is committed.

The schema is the same list of migrations as SQLite's, translated
(``INTEGER PRIMARY KEY`` row ids become identity columns, ``REAL`` becomes
``DOUBLE PRECISION``, ``INTEGER`` ``BIGINT``); the version is kept in the
one-row table ``thinserve_schema``.  Migrations run under the same lock, so
two nodes starting at once migrate once.

Faults become StoreFault subclasses naming the server (never the password)
and what to do.  After the server went away and came back the next call
connects again: a call that finds the connection broken before its
transaction began is tried once more on a new connection.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .base import (
    CannotOpenError,
    ConflictError,
    CorruptError,
    DiskFullError,
    LockedError,
    ReadOnlyError,
    StoreError,
    StoreFault,
    StoreIOError,
    UnreachableError,
)
from .changes import CHANNEL, Change, payload
from .location import describe_location, hide_password
from .migrations import MIGRATIONS, Migration
from .sql import Result, SqlStore

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to reach the server
STATEMENT_TIMEOUT = 5.0  # seconds a statement (or a wait for a lock) may take
SCHEMA_TABLE = "thinserve_schema"
# pg_advisory_xact_lock key held by every write transaction ("thin" in ASCII).
WRITER_LOCK = 0x7468696E

# Used unless the URL says otherwise: notice a vanished server within seconds.
_CONNECTION_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "thinserve",
}

ResultT = TypeVar("ResultT")


class PostgresStore(SqlStore):
    """See thinserve.store.base.Store for what each method promises.

    ``connection_url`` is the URL as given (with its password), for code that
    opens connections of its own to the same database; ``location`` is the
    same without the password, for messages.
    """

    def __init__(
        self,
        url: str,
        migrations: Sequence[Migration] = MIGRATIONS,
        connect_timeout: float = CONNECT_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
    ) -> None:
        self.connection_url = url
        self.location = describe_location(url)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        try:
            self._params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise CannotOpenError(
                f"{self.location} is not a PostgreSQL URL PostgreSQL understands",
                "write it as postgresql://user@host:port/database",
                self.location,
                hide_password(str(exc), url),
            ) from None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._depth = 0
        try:
            self._connect()
            self._prepare_schema()
            self._migrate(migrations)
        except BaseException:
            self.close()
            raise

    # Connection.

    @property
    def server(self) -> str:
        """host:port of the server, as messages name it."""
        host = str(self._params.get("host") or "the local socket")
        port = str(self._params.get("port") or "5432")
        return f"{host}:{port}"

    @property
    def database(self) -> str:
        return str(self._params.get("dbname") or self._params.get("user") or "")

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        extra = {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in self._params}
        timeout = max(2, round(self.connect_timeout))  # libpq's minimum is 2 s
        try:
            conninfo = make_conninfo(self.connection_url, connect_timeout=timeout, **extra)
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._fault(exc) from None
        try:
            ms = int(self.statement_timeout * 1000)
            conn.execute(f"SET statement_timeout = {ms}")
            conn.execute(f"SET lock_timeout = {ms}")
        except psycopg.Error as exc:
            conn.close()
            raise self._fault(exc) from None
        self._conn = conn
        return conn

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection, or a new one when the last was lost."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._discard()
            conn = self._connect()
        return conn

    def _discard(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _lost(self) -> bool:
        conn = self._conn
        return conn is None or conn.closed or conn.broken

    def _retrying(self, action: Callable[[], ResultT]) -> ResultT:
        """Run ``action`` outside a transaction; once more on a new connection
        when the old one turned out to be broken (the server restarted)."""
        was_open = not self._lost()
        try:
            return action()
        except StoreFault:
            if not (was_open and self._lost()):
                raise
            log.info("%s: the connection was lost; connecting again", self.location)
            self._discard()
            return action()

    def close(self) -> None:
        self._discard()

    # Transactions.

    def _begin(self) -> None:
        self._retrying(self._start_writing)

    def _start_writing(self) -> None:
        conn = self._connection()
        with self._faults():
            conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})")

    def _commit(self) -> None:
        conn = self._in_transaction()
        if conn.info.transaction_status == pq.TransactionStatus.INERROR:
            # PostgreSQL would turn the COMMIT into a silent ROLLBACK.
            raise StoreError(
                f"{self.location}: a statement in this transaction failed, so nothing "
                "of it was stored; try again"
            )
        with self._faults():
            conn.execute("COMMIT")

    def _rollback(self) -> None:
        """End a failed transaction; a broken connection is dropped, and a ROLLBACK
        that fails is logged, never raised over the error that caused it."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._discard()
            return
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            log.warning("%s: rolling back a failed transaction: %s", self.location, exc)
            self._discard()

    # Statements.

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        query = _placeholders(sql)
        if not self._depth:
            return self._retrying(lambda: self._run(query, params))
        if self._depth > 1 and _may_conflict(sql):
            return self._run_saved(query, params)
        return self._run(query, params)

    def _in_transaction(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection of the transaction under way; a lost one is not replaced
        (the transaction went with it)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            raise UnreachableError(
                f"lost the connection to {self.location} during a transaction",
                _UNREACHABLE[2],
                self.location,
            )
        return conn

    def _run(self, query: str, params: Sequence[Any]) -> Result:
        conn = self._in_transaction() if self._depth else self._connection()
        with self._faults():
            try:
                cursor = conn.execute(query, params)
            except psycopg.IntegrityError as exc:
                raise ConflictError(_first_line(exc)) from None
            rows = cursor.fetchall() if cursor.description is not None else []
            return Result(cursor.rowcount, rows)

    def _run_saved(self, query: str, params: Sequence[Any]) -> Result:
        """Run under a savepoint, so a ConflictError leaves the transaction usable
        (as SQLite, which undoes only the statement that failed)."""
        conn = self._in_transaction()
        with self._faults():
            conn.execute("SAVEPOINT thinserve_write")
        try:
            result = self._run(query, params)
        except ConflictError:
            with self._faults():
                conn.execute("ROLLBACK TO SAVEPOINT thinserve_write")
            raise
        with self._faults():
            conn.execute("RELEASE SAVEPOINT thinserve_write")
        return result

    def _notify(self, change: Change) -> None:
        self._execute("SELECT pg_notify(?, ?)", (CHANNEL, payload(change)))

    # Schema.

    def _label(self) -> str:
        return self.location

    def _prepare_schema(self) -> None:
        """Make the version table if it is missing (under the writer lock, so two
        nodes starting on an empty database do not both create it)."""
        row = self._one("SELECT to_regclass(?)::text", (SCHEMA_TABLE,))
        if row is not None and row[0] is not None:
            return  # so a read-only database at the current version still opens
        with self.atomic():
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
                " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),"
                " version BIGINT NOT NULL)"
            )
            self._execute(
                f"INSERT INTO {SCHEMA_TABLE} (one, version) VALUES (TRUE, 0)"
                " ON CONFLICT (one) DO NOTHING"
            )

    @property
    def schema_version(self) -> int:
        row = self._one(f"SELECT version FROM {SCHEMA_TABLE}")
        return int(row[0]) if row else 0

    def _set_schema_version(self, version: int) -> None:
        self._execute(f"UPDATE {SCHEMA_TABLE} SET version = ?", (version,))

    def _schema_statements(self, migration: Migration) -> Sequence[str]:
        return [postgres_dialect(s) for s in migration.statements]

    # Faults.

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """Turn psycopg's faults into StoreFaults naming this database; anything
        else (mistakes in SQL) passes unchanged."""
        try:
            yield
        except psycopg.Error as exc:
            fault = self._fault(exc)
            if isinstance(fault, StoreFault):
                raise fault from None
            raise

    def _fault(self, exc: psycopg.Error) -> StoreFault | psycopg.Error:
        """The StoreFault for ``exc``, or ``exc`` itself when it is not a fault."""
        cause = hide_password(_first_line(exc), self.connection_url)
        state = exc.sqlstate or ""
        where = f"the PostgreSQL database {self.database!r} at {self.server}"
        make = _FAULTS.get(state) or _FAULTS.get(state[:2])
        if make is None and isinstance(exc, psycopg.OperationalError):
            make = _connection_fault(cause)
        if make is None:
            return exc
        kind, problem, hint = make
        problem = problem.format(where=where, user=self._params.get("user") or "")
        return kind(f"{problem} ({cause})", hint, self.location, cause)


FaultSpec = tuple[type[StoreFault], str, str]

_UNREACHABLE: FaultSpec = (
    UnreachableError,
    "cannot reach {where}",
    "check that PostgreSQL runs and the database URL ([server] database); "
    "thinserve connects again by itself",
)
_BUSY: FaultSpec = (
    LockedError,
    "{where} did not answer in time: it is busy or something holds a lock",
    "look for long transactions on the server (pg_stat_activity); "
    "thinserve tries again with each change",
)
_AUTH: FaultSpec = (
    CannotOpenError,
    "{where} refused the user {user!r}",
    "check the user and password: in ~/.pgpass (or PGPASSFILE) of the user running "
    "thinserve, or in the URL of a config file only root may read",
)

_FAULTS: dict[str, FaultSpec] = {
    "53100": (
        DiskFullError,
        "disk full on the server of {where}",
        "free space on the PostgreSQL server's disk; thinserve recovers by itself",
    ),
    "25006": (
        ReadOnlyError,
        "{where} is read-only (a standby, or default_transaction_read_only)",
        "point [server] database at the primary server; thinserve recovers by itself",
    ),
    "28P01": _AUTH,
    "28000": _AUTH,
    "3D000": (
        CannotOpenError,
        "{where} does not exist",
        "create it (createdb -O <user> <name>) or correct the URL in [server] database",
    ),
    "42501": (
        CannotOpenError,
        "the user {user!r} may not use {where}",
        "make that user the database's owner (ALTER DATABASE .. OWNER TO ..)",
    ),
    "57014": _BUSY,
    "55P03": _BUSY,
    "40P01": _BUSY,
    "40001": _BUSY,
    "57P01": _UNREACHABLE,
    "57P02": _UNREACHABLE,
    "57P03": _UNREACHABLE,
    "08": _UNREACHABLE,
    "53": (
        StoreFault,
        "{where} is out of resources",
        "check the server's log (too many connections? out of memory?)",
    ),
    "58": (
        StoreIOError,
        "the server of {where} reports an I/O error",
        "check the server's disk and its log; thinserve tries again with each change",
    ),
    "XX001": (
        CorruptError,
        "{where} is damaged",
        "restore it from a backup (pg_dump) and check the server's disk",
    ),
    "XX002": (
        CorruptError,
        "an index of {where} is damaged",
        "rebuild it (REINDEX DATABASE) and check the server's disk",
    ),
}


def _connection_fault(cause: str) -> FaultSpec:
    """What a failure without SQLSTATE (libpq's own words: connecting, or a
    connection that dropped) means."""
    text = cause.lower()
    if "password" in text or ("role" in text and "does not exist" in text):
        return _AUTH
    if "database" in text and "does not exist" in text:
        return _FAULTS["3D000"]
    return _UNREACHABLE


def _first_line(exc: BaseException) -> str:
    """The error's own words, without libpq's multi-line details."""
    text = str(exc).strip().splitlines()
    return " ".join(text[0].split()) if text else type(exc).__name__


_WRITES = re.compile(r"^\s*(INSERT|UPDATE)\b", re.IGNORECASE)


def _may_conflict(sql: str) -> bool:
    return _WRITES.match(sql) is not None


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


_DIALECT = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)


def postgres_dialect(statement: str) -> str:
    """A migration's statement as PostgreSQL wants it: 8-byte numbers, identity ids."""
    for pattern, replacement in _DIALECT:
        statement = pattern.sub(replacement, statement)
    return statement
