"""The Store on SQLite (standard library sqlite3).

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
    Admin,
    ApiToken,
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
    StoreError,
    StoreFault,
    StoreIOError,
    Terminal,
    User,
)
from .migrations import MIGRATIONS, Migration

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


class SqliteStore:
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

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._faults():
            self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            with self._faults():
                self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0

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

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        version = self.schema_version
        if version > len(migrations):
            raise SchemaTooNewError(
                f"{self.path}: database schema version {version} is newer than the "
                f"{len(migrations)} this thinserve knows; run a newer thinserve or "
                "restore a backup made for this version"
            )
        for number, migration in enumerate(migrations[version:], start=version + 1):
            with self.atomic(), self._faults():
                for statement in migration.statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {int(number)}")

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self.atomic(), self._faults():
                return self._db.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise ConflictError(str(exc)) from None

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._faults():
            row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._faults():
            return self._db.execute(sql, params).fetchall()

    # Terminals.

    def upsert_terminal(self, terminal: Terminal) -> None:
        self._write(
            "INSERT INTO terminals (id, name, model, address, screen_width, screen_height,"
            " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, model = excluded.model,"
            " address = excluded.address, screen_width = excluded.screen_width,"
            " screen_height = excluded.screen_height, last_seen = excluded.last_seen",
            (
                terminal.id,
                terminal.name,
                terminal.model,
                terminal.address,
                terminal.screen_width,
                terminal.screen_height,
                terminal.last_seen,
            ),
        )

    def get_terminal(self, terminal_id: str) -> Terminal | None:
        row = self._one(f"SELECT {_TERMINAL} FROM terminals WHERE id = ?", (terminal_id,))
        return Terminal(*row) if row else None

    def delete_terminal(self, terminal_id: str) -> bool:
        return self._write("DELETE FROM terminals WHERE id = ?", (terminal_id,)).rowcount > 0

    def list_terminals(self) -> list[Terminal]:
        return [Terminal(*r) for r in self._all(f"SELECT {_TERMINAL} FROM terminals ORDER BY id")]

    # Desktops.

    def upsert_desktop(self, desktop: Desktop) -> None:
        self._write(
            "INSERT INTO desktops (name, backend, pool) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET backend = excluded.backend, pool = excluded.pool",
            (desktop.name, desktop.backend, desktop.pool),
        )

    def get_desktop(self, name: str) -> Desktop | None:
        row = self._one("SELECT name, backend, pool FROM desktops WHERE name = ?", (name,))
        return Desktop(*row) if row else None

    def list_desktops(self) -> list[Desktop]:
        rows = self._all("SELECT name, backend, pool FROM desktops ORDER BY name")
        return [Desktop(*r) for r in rows]

    def delete_desktop(self, name: str) -> bool:
        with self.atomic():
            self._write("DELETE FROM pairings WHERE desktop = ?", (name,))
            self._write("UPDATE users SET desktop = NULL WHERE desktop = ?", (name,))
            return self._write("DELETE FROM desktops WHERE name = ?", (name,)).rowcount > 0

    # Pairings.

    def pair(self, pairing: Pairing) -> None:
        with self.atomic():
            self._write(
                "DELETE FROM pairings WHERE terminal_id = ? OR desktop = ?",
                (pairing.terminal_id, pairing.desktop),
            )
            self._write(
                "INSERT INTO pairings (terminal_id, desktop, created, actor) VALUES (?, ?, ?, ?)",
                (pairing.terminal_id, pairing.desktop, pairing.created, pairing.actor),
            )

    def unpair(self, terminal_id: str) -> Pairing | None:
        with self.atomic():
            old = self.pairing_for(terminal_id)
            if old is not None:
                self._write("DELETE FROM pairings WHERE terminal_id = ?", (terminal_id,))
            return old

    def pairing_for(self, terminal_id: str) -> Pairing | None:
        row = self._one(f"SELECT {_PAIRING} FROM pairings WHERE terminal_id = ?", (terminal_id,))
        return Pairing(*row) if row else None

    def pairing_for_desktop(self, desktop: str) -> Pairing | None:
        row = self._one(f"SELECT {_PAIRING} FROM pairings WHERE desktop = ?", (desktop,))
        return Pairing(*row) if row else None

    def list_pairings(self) -> list[Pairing]:
        rows = self._all(f"SELECT {_PAIRING} FROM pairings ORDER BY terminal_id")
        return [Pairing(*r) for r in rows]

    # Pairing codes.

    def put_pairing_code(self, code: PairingCode) -> None:
        with self.atomic():
            self._write("DELETE FROM pairing_codes WHERE terminal_id = ?", (code.terminal_id,))
            self._write(
                "INSERT INTO pairing_codes (code, terminal_id, created, expires, failures)"
                " VALUES (?, ?, ?, ?, ?)",
                (code.code, code.terminal_id, code.created, code.expires, code.failures),
            )

    def get_pairing_code(self, code: str) -> PairingCode | None:
        row = self._one(f"SELECT {_CODE} FROM pairing_codes WHERE code = ?", (code,))
        return PairingCode(*row) if row else None

    def pairing_code_for(self, terminal_id: str) -> PairingCode | None:
        row = self._one(f"SELECT {_CODE} FROM pairing_codes WHERE terminal_id = ?", (terminal_id,))
        return PairingCode(*row) if row else None

    def consume_pairing_code(self, code: str, now: float) -> PairingCode | None:
        with self.atomic():
            found = self.get_pairing_code(code)
            if found is None or found.expires <= now:
                return None
            self._write("DELETE FROM pairing_codes WHERE code = ?", (code,))
            return found

    def record_code_failure(self, code: str) -> int:
        with self.atomic():
            self._write("UPDATE pairing_codes SET failures = failures + 1 WHERE code = ?", (code,))
            row = self._one("SELECT failures FROM pairing_codes WHERE code = ?", (code,))
            return int(row[0]) if row else 0

    def delete_pairing_code(self, code: str) -> None:
        self._write("DELETE FROM pairing_codes WHERE code = ?", (code,))

    def delete_expired_pairing_codes(self, now: float) -> int:
        return self._write("DELETE FROM pairing_codes WHERE expires <= ?", (now,)).rowcount

    # Users.

    def add_user(self, user: User, secret_hash: str) -> None:
        self._write(
            "INSERT INTO users (name, secret_hash, desktop, created) VALUES (?, ?, ?, ?)",
            (user.name, secret_hash, user.desktop, user.created),
        )

    def get_user(self, name: str) -> User | None:
        row = self._one(f"SELECT {_USER} FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._all(f"SELECT {_USER} FROM users ORDER BY name")]

    def user_secret_hash(self, name: str) -> str | None:
        row = self._one("SELECT secret_hash FROM users WHERE name = ?", (name,))
        return str(row[0]) if row else None

    def set_user_secret_hash(self, name: str, secret_hash: str) -> None:
        cursor = self._write("UPDATE users SET secret_hash = ? WHERE name = ?", (secret_hash, name))
        if cursor.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def set_user_desktop(self, name: str, desktop: str | None) -> None:
        cursor = self._write("UPDATE users SET desktop = ? WHERE name = ?", (desktop, name))
        if cursor.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def users_with_desktop(self, desktop: str) -> list[User]:
        rows = self._all(f"SELECT {_USER} FROM users WHERE desktop = ? ORDER BY name", (desktop,))
        return [_user(r) for r in rows]

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        cursor = self._write("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
        if cursor.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def delete_user(self, name: str) -> bool:
        return self._write("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    # Admin accounts.

    def add_admin(self, admin: Admin, secret_hash: str) -> None:
        self._write(
            "INSERT INTO admins (name, role, secret_hash, created, disabled, locked_until,"
            " failures) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                admin.name,
                admin.role,
                secret_hash,
                admin.created,
                int(admin.disabled),
                admin.locked_until,
                admin.failures,
            ),
        )

    def get_admin(self, name: str) -> Admin | None:
        row = self._one(f"SELECT {_ADMIN} FROM admins WHERE name = ?", (name,))
        return _admin(row) if row else None

    def list_admins(self) -> list[Admin]:
        return [_admin(r) for r in self._all(f"SELECT {_ADMIN} FROM admins ORDER BY name")]

    def admin_secret_hash(self, name: str) -> str | None:
        row = self._one("SELECT secret_hash FROM admins WHERE name = ?", (name,))
        return str(row[0]) if row else None

    def set_admin_secret_hash(self, name: str, secret_hash: str) -> None:
        self._update_admin(name, "secret_hash = ?", (secret_hash,))

    def set_admin_disabled(self, name: str, disabled: bool) -> None:
        self._update_admin(name, "disabled = ?", (int(disabled),))

    def set_admin_role(self, name: str, role: str) -> None:
        self._update_admin(name, "role = ?", (role,))

    def record_admin_failure(self, name: str, now: float, locked_until: float) -> int:
        with self.atomic():
            self._write(
                "UPDATE admins SET failures = failures + 1, locked_until = MAX("
                "CASE WHEN locked_until <= ? THEN 0 ELSE locked_until END, ?) WHERE name = ?",
                (now, locked_until, name),
            )
            row = self._one("SELECT failures FROM admins WHERE name = ?", (name,))
            return int(row[0]) if row else 0

    def clear_admin_failures(self, name: str) -> None:
        self._write("UPDATE admins SET failures = 0, locked_until = 0 WHERE name = ?", (name,))

    def delete_admin(self, name: str) -> bool:
        with self.atomic():
            self._write("DELETE FROM api_tokens WHERE admin = ?", (name,))
            return self._write("DELETE FROM admins WHERE name = ?", (name,)).rowcount > 0

    def _update_admin(self, name: str, assignment: str, params: tuple[Any, ...]) -> None:
        cursor = self._write(f"UPDATE admins SET {assignment} WHERE name = ?", (*params, name))
        if cursor.rowcount == 0:
            raise NotFoundError(f"no admin {name!r}")

    # API tokens.

    def add_token(self, token: ApiToken, token_hash: str) -> None:
        self._write(
            "INSERT INTO api_tokens (id, admin, label, token_hash, created, last_used)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token.id, token.admin, token.label, token_hash, token.created, token.last_used),
        )

    def token_hash(self, token_id: str) -> str | None:
        row = self._one("SELECT token_hash FROM api_tokens WHERE id = ?", (token_id,))
        return str(row[0]) if row else None

    def get_token(self, token_id: str) -> ApiToken | None:
        row = self._one(f"SELECT {_TOKEN} FROM api_tokens WHERE id = ?", (token_id,))
        return ApiToken(*row) if row else None

    def list_tokens(self, admin: str | None = None) -> list[ApiToken]:
        where, params = "", []
        if admin is not None:
            where, params = "WHERE admin = ?", [admin]
        rows = self._all(f"SELECT {_TOKEN} FROM api_tokens {where} ORDER BY admin, label", params)
        return [ApiToken(*r) for r in rows]

    def delete_token(self, token_id: str) -> bool:
        return self._write("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount > 0

    def touch_token(self, token_id: str, when: float) -> None:
        self._write("UPDATE api_tokens SET last_used = ? WHERE id = ?", (when, token_id))

    # Sessions.

    def start_session(
        self, terminal_id: str, desktop: str, user: str | None, started: float
    ) -> int:
        cursor = self._write(
            "INSERT INTO sessions (terminal_id, desktop, user_name, started) VALUES (?, ?, ?, ?)",
            (terminal_id, desktop, user, started),
        )
        if cursor.lastrowid is None:
            raise StoreError("session insert returned no id")
        return cursor.lastrowid

    def end_session(self, session_id: int, ended: float) -> None:
        self._write(
            "UPDATE sessions SET ended = ? WHERE id = ? AND ended IS NULL", (ended, session_id)
        )

    def end_open_sessions(self, ended: float) -> int:
        return self._write("UPDATE sessions SET ended = ? WHERE ended IS NULL", (ended,)).rowcount

    def list_sessions(
        self, limit: int = 100, terminal_id: str | None = None, before_id: int | None = None
    ) -> list[SessionRecord]:
        conditions = ["id < ?"]
        params: list[int | str] = [before_id if before_id is not None else 2**62]
        if terminal_id is not None:
            conditions.append("terminal_id = ?")
            params.append(terminal_id)
        where = " AND ".join(conditions)
        rows = self._all(
            f"SELECT {_SESSION} FROM sessions WHERE {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [SessionRecord(*r) for r in rows]

    # Audit.

    def append_audit(
        self, time: float, actor: str, action: str, subject: str, detail: str = ""
    ) -> AuditEntry:
        cursor = self._write(
            "INSERT INTO audit (time, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (time, actor, action, subject, detail),
        )
        if cursor.lastrowid is None:
            raise StoreError("audit insert returned no id")
        return AuditEntry(cursor.lastrowid, time, actor, action, subject, detail)

    def list_audit(
        self, after_id: int = 0, limit: int = 1000, subject: str | None = None
    ) -> list[AuditEntry]:
        where = "WHERE id > ?"
        params: list[int | str] = [after_id]
        if subject is not None:
            where, params = where + " AND subject = ?", [*params, subject]
        rows = self._all(
            f"SELECT {_AUDIT} FROM audit {where} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [AuditEntry(*r) for r in rows]


_TERMINAL = "id, name, model, address, screen_width, screen_height, last_seen"
_PAIRING = "terminal_id, desktop, created, actor"
_CODE = "code, terminal_id, created, expires, failures"
_USER = "name, desktop, created, disabled"
_ADMIN = "name, role, created, disabled, locked_until, failures"
_TOKEN = "id, admin, label, created, last_used"
_SESSION = "id, terminal_id, desktop, user_name, started, ended"
_AUDIT = "id, time, actor, action, subject, detail"


def _user(row: tuple[Any, ...]) -> User:
    name, desktop, created, disabled = row
    return User(name, desktop, created, bool(disabled))


def _admin(row: tuple[Any, ...]) -> Admin:
    name, role, created, disabled, locked_until, failures = row
    return Admin(name, role, created, bool(disabled), float(locked_until), int(failures))


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
