"""The Store on SQLite (standard library sqlite3).

The SQL of every Store method is shared with PostgreSQL (sql.py); this
module adds the connection, transactions, schema version and faults.

One connection, WAL journal, foreign keys on, every write in a transaction.
Opening a database checks it (``PRAGMA quick_check``) and runs the
migrations it has not seen yet; a database written by a newer thinserve is
refused rather than guessed at.  Use ":memory:" for a throwaway store.  The
connection belongs to the thread that opened the store, as the relay runs on
one reactor thread.

SQLite's faults (disk full, locked, read-only, I/O error, damaged file)
become ``StoreFault`` subclasses naming the file and what to do.  A failed
transaction is rolled back, so nothing stored before is touched, and the
same connection carries on once the cause is gone (space freed, lock
released): no restart.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..paths import DATABASE_NAME, default_state_dir
from .base import (
    CannotOpenError,
    ConflictError,
    CorruptError,
    DiskFullError,
    LockedError,
    ReadOnlyError,
    StoreFault,
    StoreIOError,
)
from .migrations import MIGRATIONS, Migration
from .sql import Result, SqlStore

log = logging.getLogger(__name__)

MEMORY = ":memory:"
BUSY_TIMEOUT = 5.0  # seconds a write waits for another program's lock

# SQLite's primary result codes for the faults a StoreFault reports.
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR = 3, 5, 6, 8, 10
_CORRUPT, _FULL, _CANTOPEN, _PROTOCOL, _NOTADB = 11, 13, 14, 15, 26


def default_path(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """Where the database lives unless configured otherwise: thinserve.db in
    the default state directory (thinserve.paths; a configured state
    directory's database is ``Config.database_path``).

    Root (a system service): /var/lib/thinserve/thinserve.db.  Anyone else:
    $XDG_DATA_HOME/thinserve/thinserve.db, else
    ~/.local/share/thinserve/thinserve.db.  $STATE_DIRECTORY (systemd) first.
    """
    return default_state_dir(environ, euid) / DATABASE_NAME


class SqliteStore(SqlStore):
    """See thinserve.store.base.Store for what each method promises."""

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            self._create(Path(self.path))
        with self._faults():
            self._db = sqlite3.connect(self.path, isolation_level=None)
        self._depth = 0
        try:
            with self._faults():
                self._db.execute("PRAGMA foreign_keys = ON")
                self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                if self.path != MEMORY:
                    self._db.execute("PRAGMA journal_mode = WAL")
                    self._db.execute("PRAGMA synchronous = NORMAL")
                    self._check()
            self._migrate(migrations)
        except BaseException:
            self._db.close()
            raise

    # Connection and schema.

    def _begin(self) -> None:
        with self._faults():
            self._db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        with self._faults():
            self._db.execute("COMMIT")

    def _rollback(self) -> None:
        """End a failed transaction, leaving the connection ready for the next one.

        After a full disk or an I/O error SQLite may have rolled back already;
        a ROLLBACK that fails is logged, never raised over the error that
        caused it.
        """
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("%s: rolling back a failed transaction: %s", self.path, exc)

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        with self._faults():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _check(self) -> None:
        """Refuse a damaged file at once, rather than at the first query to reach
        the damage (a thinserve database is small: this takes milliseconds)."""
        problems = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            text = "; ".join(problems).replace("*** in database main ***", "")
            fault = _fault(self.path, _CORRUPT, " ".join(text.split())[:300])
            assert fault is not None
            raise fault

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """Turn SQLite's faults (full, locked, read-only, I/O, damaged) into
        StoreFaults naming this database; anything else passes unchanged."""
        try:
            yield
        except sqlite3.Error as exc:
            fault = _fault(self.path, getattr(exc, "sqlite_errorcode", None), str(exc))
            if fault is None:
                raise
            raise fault from exc

    def _create(self, path: Path) -> None:
        try:
            _create_private(path)
        except OSError as exc:
            code = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _READONLY}
            fault = _fault(self.path, code.get(exc.errno or 0, _CANTOPEN), exc.strerror or "")
            assert fault is not None
            raise fault from exc

    def _label(self) -> str:
        return self.path

    def _schema_statements(self, migration: Migration) -> Sequence[str]:
        return migration.statements

    def _set_schema_version(self, version: int) -> None:
        with self._faults():
            self._db.execute(f"PRAGMA user_version = {int(version)}")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        try:
            with self._faults():
                cursor = self._db.execute(sql, params)
                rows = cursor.fetchall()
        except sqlite3.IntegrityError as exc:
            raise ConflictError(str(exc)) from None
        return Result(cursor.rowcount, rows)


def _fault(path: str, code: int | None, cause: str) -> StoreFault | None:
    """The StoreFault for SQLite result ``code`` (primary or extended) on the
    database at ``path``; None for other errors (mistakes in SQL, constraints)."""
    if code is None:
        return None
    primary = code & 0xFF
    if path != MEMORY:
        path = os.path.abspath(path)
    where = os.path.dirname(path) if path != MEMORY else "the memory database"
    if primary == _IOERR and path != MEMORY and _no_space(path):
        primary = _FULL  # some writes to a full disk report an I/O error
    if primary == _FULL:
        return DiskFullError(
            f"disk full at {where}: cannot write the database {path}",
            "free space there; a running thinserve recovers by itself, no restart needed",
            path,
            cause,
        )
    if primary in (_BUSY, _LOCKED, _PROTOCOL):
        return LockedError(
            f"the database {path} is locked by another program ({cause})",
            "stop the other thinserve (or other program) using it, "
            "or give each thinserve its own [server] database",
            path,
            cause,
        )
    if primary == _READONLY:
        return ReadOnlyError(
            f"the database {path} is read-only ({cause})",
            "make the file, its directory and its file system writable for the user "
            "running thinserve; thinserve recovers by itself",
            path,
            cause,
        )
    if primary == _IOERR:
        return StoreIOError(
            f"disk I/O error on the database {path} ({cause})",
            "check the disk and the kernel log (dmesg); thinserve tries again with each change",
            path,
            cause,
        )
    if primary in (_CORRUPT, _NOTADB):
        return CorruptError(
            f"{path} is not a thinserve database, or it is damaged ({cause})",
            "restore it from a backup, or move it aside to start with an empty database "
            "(its pairings and users are then lost), while thinserve is stopped",
            path,
            cause,
        )
    if primary in (_CANTOPEN, _PERM):
        return CannotOpenError(
            f"cannot open the database {path} ({cause})",
            "check that its directory exists and the user running thinserve may write there",
            path,
            cause,
        )
    return None


def _no_space(path: str) -> bool:
    """Whether the file system holding ``path`` has no room left."""
    try:
        found = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return found.f_bavail == 0


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (it holds secret hashes)."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
