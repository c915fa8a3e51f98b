"""The Store's SQL, written once for SQLite and PostgreSQL.

``SqlStore`` implements every Store method on a few primitives that each
database fills in (sqlite.py, postgres.py): ``_execute`` runs one statement
and maps the database's faults to StoreFaults and its constraint failures to
ConflictError, ``atomic`` makes a transaction, ``_notify`` tells other nodes
what changed (PostgreSQL only), and the schema version is read and written
in the database's own way.

The SQL here is the part both databases accept: ``?`` placeholders (the
PostgreSQL store turns them into psycopg's ``%s``), ``ON CONFLICT .. DO
UPDATE`` and ``RETURNING`` (SQLite 3.35 and later), no scalar MAX/GREATEST.
Writes that must not race across processes are single statements
(``DELETE .. RETURNING``, ``UPDATE .. RETURNING``) or run in ``atomic()``,
which both stores make exclusive among writers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .base import (
    Admin,
    ApiToken,
    AuditEntry,
    Desktop,
    Login,
    NotFoundError,
    Pairing,
    PairingCode,
    SchemaTooNewError,
    SessionRecord,
    StoreError,
    Terminal,
    User,
)
from .changes import Change
from .migrations import Migration

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Result:
    """What one statement did: rows changed, and the rows it returned."""

    rowcount: int
    rows: list[Row] = field(default_factory=list)


class SqlStore:
    """See thinserve.store.base.Store for what each method promises."""

    # -- what each database provides --------------------------------------------------------

    _depth = 0  # how deep in atomic() blocks the store is

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A transaction; nesting joins the outer one.  Exclusive among writers."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._begin()
        self._depth = 1
        try:
            yield
            self._commit()
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0

    def _begin(self) -> None:
        """Start a transaction that excludes other writers."""
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        """End a failed transaction; never raise over the error that caused it."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def schema_version(self) -> int:
        raise NotImplementedError

    def _label(self) -> str:
        """The database, named for messages (never with a password)."""
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement: StoreFault for the database's faults, ConflictError
        when it breaks a uniqueness or reference rule."""
        raise NotImplementedError

    def _schema_statements(self, migration: Migration) -> Sequence[str]:
        """The migration's statements in this database's dialect."""
        raise NotImplementedError

    def _set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    def _notify(self, change: Change) -> None:
        """Tell other nodes sharing the database, once the transaction commits."""

    # -- shared helpers --------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        """Run the migrations the database has not seen, each in its own transaction.

        The version is read again inside each transaction, so of two
        processes opening one database at once only one runs a migration.
        """
        start = self.schema_version
        self._refuse_newer(start, len(migrations))
        for number, migration in enumerate(migrations[start:], start=start + 1):
            with self.atomic():
                version = self.schema_version
                self._refuse_newer(version, len(migrations))
                if version >= number:
                    continue
                for statement in self._schema_statements(migration):
                    self._execute(statement)
                self._set_schema_version(number)

    def _refuse_newer(self, version: int, known: int) -> None:
        if version > known:
            raise SchemaTooNewError(
                f"{self._label()}: database schema version {version} is newer than the "
                f"{known} this thinserve knows; run a newer thinserve or "
                "restore a backup made for this version"
            )

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._execute(sql, params).rows

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write in a transaction; how many rows it changed."""
        with self.atomic():
            return self._execute(sql, params).rowcount

    def _write_rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a write with RETURNING in a transaction; the rows it returned."""
        with self.atomic():
            return self._execute(sql, params).rows

    def _notify_all(self, kind: str, subjects: Iterator[Any] | list[Any]) -> None:
        for subject in dict.fromkeys(str(s) for s in subjects):
            self._notify(Change(kind, subject))

    # -- terminals ---------------------------------------------------------------------------

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
        with self.atomic():
            deleted = self._write("DELETE FROM terminals WHERE id = ?", (terminal_id,)) > 0
            if deleted:
                self._notify(Change("pairing", terminal_id))
            return deleted

    def list_terminals(self) -> list[Terminal]:
        return [Terminal(*r) for r in self._all(f"SELECT {_TERMINAL} FROM terminals ORDER BY id")]

    # -- desktops ----------------------------------------------------------------------------

    def upsert_desktop(self, desktop: Desktop) -> None:
        with self.atomic():
            self._write(
                "INSERT INTO desktops (name, backend, pool) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET backend = excluded.backend,"
                " pool = excluded.pool",
                (desktop.name, desktop.backend, desktop.pool),
            )
            self._notify(Change("desktop", desktop.name))

    def get_desktop(self, name: str) -> Desktop | None:
        row = self._one("SELECT name, backend, pool FROM desktops WHERE name = ?", (name,))
        return Desktop(*row) if row else None

    def list_desktops(self) -> list[Desktop]:
        rows = self._all("SELECT name, backend, pool FROM desktops ORDER BY name")
        return [Desktop(*r) for r in rows]

    def delete_desktop(self, name: str) -> bool:
        with self.atomic():
            unpaired = self._write_rows(
                "DELETE FROM pairings WHERE desktop = ? RETURNING terminal_id", (name,)
            )
            owners = self._write_rows(
                "UPDATE users SET desktop = NULL WHERE desktop = ? RETURNING name", (name,)
            )
            deleted = self._write("DELETE FROM desktops WHERE name = ?", (name,)) > 0
            self._notify_all("pairing", [r[0] for r in unpaired])
            self._notify_all("user", [r[0] for r in owners])
            if deleted:
                self._notify(Change("desktop", name))
            return deleted

    # -- pairings ----------------------------------------------------------------------------

    def pair(self, pairing: Pairing) -> None:
        with self.atomic():
            replaced = self._write_rows(
                "DELETE FROM pairings WHERE terminal_id = ? OR desktop = ? RETURNING terminal_id",
                (pairing.terminal_id, pairing.desktop),
            )
            self._write(
                "INSERT INTO pairings (terminal_id, desktop, created, actor) VALUES (?, ?, ?, ?)",
                (pairing.terminal_id, pairing.desktop, pairing.created, pairing.actor),
            )
            self._notify_all("pairing", [pairing.terminal_id, *(r[0] for r in replaced)])

    def unpair(self, terminal_id: str) -> Pairing | None:
        with self.atomic():
            rows = self._write_rows(
                f"DELETE FROM pairings WHERE terminal_id = ? RETURNING {_PAIRING}", (terminal_id,)
            )
            if rows:
                self._notify(Change("pairing", terminal_id))
            return Pairing(*rows[0]) if rows else None

    def pairing_for(self, terminal_id: str) -> Pairing | None:
        row = self._one(f"SELECT {_PAIRING} FROM pairings WHERE terminal_id = ?", (terminal_id,))
        return Pairing(*row) if row else None

    def pairing_for_desktop(self, desktop: str) -> Pairing | None:
        row = self._one(f"SELECT {_PAIRING} FROM pairings WHERE desktop = ?", (desktop,))
        return Pairing(*row) if row else None

    def list_pairings(self) -> list[Pairing]:
        rows = self._all(f"SELECT {_PAIRING} FROM pairings ORDER BY terminal_id")
        return [Pairing(*r) for r in rows]

    # -- pairing codes -----------------------------------------------------------------------

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

    def list_pairing_codes(self) -> list[PairingCode]:
        return [PairingCode(*row) for row in self._all(f"SELECT {_CODE} FROM pairing_codes")]

    def consume_pairing_code(self, code: str, now: float) -> PairingCode | None:
        rows = self._write_rows(
            f"DELETE FROM pairing_codes WHERE code = ? AND expires > ? RETURNING {_CODE}",
            (code, now),
        )
        return PairingCode(*rows[0]) if rows else None

    def record_code_failure(self, code: str) -> int:
        rows = self._write_rows(
            "UPDATE pairing_codes SET failures = failures + 1 WHERE code = ? RETURNING failures",
            (code,),
        )
        return int(rows[0][0]) if rows else 0

    def delete_pairing_code(self, code: str) -> None:
        self._write("DELETE FROM pairing_codes WHERE code = ?", (code,))

    def delete_expired_pairing_codes(self, now: float) -> int:
        return self._write("DELETE FROM pairing_codes WHERE expires <= ?", (now,))

    # -- users -------------------------------------------------------------------------------

    def add_user(self, user: User, secret_hash: str) -> None:
        with self.atomic():
            self._write(
                "INSERT INTO users (name, secret_hash, desktop, created) VALUES (?, ?, ?, ?)",
                (user.name, secret_hash, user.desktop, user.created),
            )
            self._notify(Change("user", user.name))

    def get_user(self, name: str) -> User | None:
        row = self._one(f"SELECT {_USER} FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._all(f"SELECT {_USER} FROM users ORDER BY name")]

    def user_secret_hash(self, name: str) -> str | None:
        row = self._one("SELECT secret_hash FROM users WHERE name = ?", (name,))
        return str(row[0]) if row else None

    def set_user_secret_hash(self, name: str, secret_hash: str) -> None:
        if self._write("UPDATE users SET secret_hash = ? WHERE name = ?", (secret_hash, name)) == 0:
            raise NotFoundError(f"no user {name!r}")

    def set_user_desktop(self, name: str, desktop: str | None) -> None:
        self._update_user(name, "desktop = ?", desktop)

    def users_with_desktop(self, desktop: str) -> list[User]:
        rows = self._all(f"SELECT {_USER} FROM users WHERE desktop = ? ORDER BY name", (desktop,))
        return [_user(r) for r in rows]

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        self._update_user(name, "disabled = ?", int(disabled))

    def delete_user(self, name: str) -> bool:
        with self.atomic():
            deleted = self._write("DELETE FROM users WHERE name = ?", (name,)) > 0
            if deleted:
                self._notify(Change("user", name))
            return deleted

    def _update_user(self, name: str, assignment: str, value: Any) -> None:
        with self.atomic():
            if self._write(f"UPDATE users SET {assignment} WHERE name = ?", (value, name)) == 0:
                raise NotFoundError(f"no user {name!r}")
            self._notify(Change("user", name))

    # -- logins ------------------------------------------------------------------------------

    def set_login(self, login: Login) -> Login | None:
        with self.atomic():
            old = self.get_login(login.user)
            self._write(
                "INSERT INTO logins (user_name, terminal_id, node, since) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_name) DO UPDATE SET terminal_id = excluded.terminal_id,"
                " node = excluded.node, since = excluded.since",
                (login.user, login.terminal_id, login.node, login.since),
            )
            self._notify(Change("user", login.user))
            return old

    def get_login(self, user: str) -> Login | None:
        row = self._one(f"SELECT {_LOGIN} FROM logins WHERE user_name = ?", (user,))
        return Login(*row) if row else None

    def delete_login(
        self, user: str, terminal_id: str | None = None, node: str | None = None
    ) -> bool:
        conditions, params = ["user_name = ?"], [user]
        for column, value in (("terminal_id", terminal_id), ("node", node)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        with self.atomic():
            deleted = self._write(f"DELETE FROM logins WHERE {' AND '.join(conditions)}", params)
            if deleted:
                self._notify(Change("user", user))
            return deleted > 0

    def list_logins(self, node: str | None = None) -> list[Login]:
        where, params = "", []
        if node is not None:
            where, params = "WHERE node = ?", [node]
        rows = self._all(f"SELECT {_LOGIN} FROM logins {where} ORDER BY user_name", params)
        return [Login(*r) for r in rows]

    # -- admin accounts ----------------------------------------------------------------------

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
        # The lock kept is the later of the stored one (unless it has expired at
        # ``now``) and ``locked_until``; both are >= 0.
        rows = self._write_rows(
            "UPDATE admins SET failures = failures + 1, locked_until = CASE"
            " WHEN locked_until > ? AND locked_until >= ? THEN locked_until ELSE ? END"
            " WHERE name = ? RETURNING failures",
            (now, locked_until, locked_until, name),
        )
        return int(rows[0][0]) if rows else 0

    def clear_admin_failures(self, name: str) -> None:
        self._write("UPDATE admins SET failures = 0, locked_until = 0 WHERE name = ?", (name,))

    def delete_admin(self, name: str) -> bool:
        with self.atomic():
            self._write("DELETE FROM api_tokens WHERE admin = ?", (name,))
            return self._write("DELETE FROM admins WHERE name = ?", (name,)) > 0

    def _update_admin(self, name: str, assignment: str, params: tuple[Any, ...]) -> None:
        if self._write(f"UPDATE admins SET {assignment} WHERE name = ?", (*params, name)) == 0:
            raise NotFoundError(f"no admin {name!r}")

    # -- API tokens --------------------------------------------------------------------------

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
        return self._write("DELETE FROM api_tokens WHERE id = ?", (token_id,)) > 0

    def touch_token(self, token_id: str, when: float) -> None:
        self._write("UPDATE api_tokens SET last_used = ? WHERE id = ?", (when, token_id))

    # -- sessions ----------------------------------------------------------------------------

    def start_session(
        self, terminal_id: str, desktop: str, user: str | None, started: float
    ) -> int:
        rows = self._write_rows(
            "INSERT INTO sessions (terminal_id, desktop, user_name, started) VALUES (?, ?, ?, ?)"
            " RETURNING id",
            (terminal_id, desktop, user, started),
        )
        if not rows:
            raise StoreError("session insert returned no id")
        return int(rows[0][0])

    def end_session(self, session_id: int, ended: float) -> None:
        self._write(
            "UPDATE sessions SET ended = ? WHERE id = ? AND ended IS NULL", (ended, session_id)
        )

    def end_open_sessions(self, ended: float) -> int:
        return self._write("UPDATE sessions SET ended = ? WHERE ended IS NULL", (ended,))

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

    # -- audit -------------------------------------------------------------------------------

    def append_audit(
        self, time: float, actor: str, action: str, subject: str, detail: str = ""
    ) -> AuditEntry:
        rows = self._write_rows(
            "INSERT INTO audit (time, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (time, actor, action, subject, detail),
        )
        if not rows:
            raise StoreError("audit insert returned no id")
        return AuditEntry(int(rows[0][0]), time, actor, action, subject, detail)

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
_LOGIN = "user_name, terminal_id, node, since"
_ADMIN = "name, role, created, disabled, locked_until, failures"
_TOKEN = "id, admin, label, created, last_used"
_SESSION = "id, terminal_id, desktop, user_name, started, ended"
_AUDIT = "id, time, actor, action, subject, detail"


def _user(row: Row) -> User:
    name, desktop, created, disabled = row
    return User(name, desktop, created, bool(disabled))


def _admin(row: Row) -> Admin:
    name, role, created, disabled, locked_until, failures = row
    return Admin(name, role, created, bool(disabled), float(locked_until), int(failures))
