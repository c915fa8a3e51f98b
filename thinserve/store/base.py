"""The storage interface: what the broker keeps across restarts.

A ``Store`` holds terminals, desktops, pairings, pairing codes, users (with
an opaque secret hash), who is logged in where (for the nodes of a site),
the dashboard's admin accounts and API tokens (hashes only), session history
and the audit log.  It holds no
policy: the broker decides, the store remembers.  ``SqliteStore`` (one
node) and ``PostgresStore`` (several nodes sharing one database) fill the
same Protocol with the same semantics, which docs/broker.md spells out;
their SQL is shared (sql.py).

Times are seconds since the epoch as floats.  Every method is atomic on its
own; ``atomic()`` groups several calls into one transaction.  A method that
cannot use its database (disk full, locked, read-only, damaged, server
unreachable) raises a
``StoreFault`` naming the database and what to do; its transaction is rolled
back, and the store works again once the cause is gone.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """The store could not do what was asked; the message says why."""


class StoreFault(StoreError):
    """The database cannot be used right now: its disk is full, or it is locked,
    read-only, damaged or failing.  What was being written is rolled back and
    nothing stored before is changed.

    ``problem`` says what happened and where, ``hint`` what to do next (the
    message is both), ``path`` names the database and ``cause`` is the
    database's own words.  ``reason`` is a few words for a terminal's screen.
    """

    reason = "its database cannot be used"

    def __init__(self, problem: str, hint: str, path: str = "", cause: str = "") -> None:
        super().__init__(f"{problem}; {hint}")
        self.problem = problem
        self.hint = hint
        self.path = path
        self.cause = cause


class DiskFullError(StoreFault):
    """No space left where the database lives; writes work again once there is."""

    reason = "its disk is full"


class LockedError(StoreFault):
    """Another program holds the database locked."""

    reason = "its database is in use by another program"


class ReadOnlyError(StoreFault):
    """The database, its directory or its file system cannot be written."""

    reason = "its database cannot be written"


class StoreIOError(StoreFault):
    """The operating system reported an I/O error reading or writing the database."""

    reason = "its disk reports errors"


class CorruptError(StoreFault):
    """The file is not a thinserve database, or it is damaged."""

    reason = "its database is damaged"


class CannotOpenError(StoreFault):
    """The database file cannot be opened or created."""

    reason = "it cannot open its database"


class UnreachableError(StoreFault):
    """The database server cannot be reached: it is down, restarting, or the
    network or its address is wrong.  The next call tries to connect again."""

    reason = "it cannot reach its database"


class SchemaTooNewError(StoreError):
    """The database was written by a newer thinserve than this one."""


class ConflictError(StoreError):
    """A write would break a uniqueness or reference rule."""


class NotFoundError(StoreError):
    """A write named a row that does not exist."""


@dataclass(frozen=True)
class Terminal:
    """A terminal as last seen.  Nothing here grants it anything."""

    id: str
    name: str = ""
    model: str = ""
    address: str = ""
    screen_width: int = 0
    screen_height: int = 0
    last_seen: float = 0.0


@dataclass(frozen=True)
class Desktop:
    """A desktop the relay can show; ``pool`` names its pool, if any."""

    name: str
    backend: str
    pool: str | None = None


@dataclass(frozen=True)
class Pairing:
    """An administrator's decision: this terminal shows this desktop.

    A terminal has at most one pairing and a desktop at most one.
    """

    terminal_id: str
    desktop: str
    created: float
    actor: str


@dataclass(frozen=True)
class PairingCode:
    """A short code an unknown terminal shows so an administrator can pair it."""

    code: str  # normalised: no separators, upper case
    terminal_id: str
    created: float
    expires: float
    failures: int = 0  # wrong tries aimed at this terminal's code


@dataclass(frozen=True)
class User:
    """A hot-desking user; ``desktop`` is their own desktop, if they have one."""

    name: str
    desktop: str | None
    created: float
    disabled: bool = False  # refused at the login screen until enabled again


@dataclass(frozen=True)
class Login:
    """Who is logged in where, for the nodes of a site sharing the database:
    one row per user, naming the terminal and the node it is connected to."""

    user: str
    terminal_id: str
    node: str
    since: float


@dataclass(frozen=True)
class Admin:
    """An account of the admin dashboard; its password is kept as an opaque hash.

    ``failures`` counts wrong passwords since the last right one;
    ``locked_until`` (epoch seconds, 0 for never) refuses logins until then,
    and is kept here so that a restart does not lift a lockout.
    """

    name: str
    role: str  # "helpdesk" or "admin" (thinserve.admin.principal.ROLES)
    created: float
    disabled: bool = False
    locked_until: float = 0.0
    failures: int = 0


@dataclass(frozen=True)
class ApiToken:
    """A bearer token acting for an admin account; only a hash of the token is stored."""

    id: str
    admin: str
    label: str
    created: float
    last_used: float | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A period during which a terminal controlled a desktop."""

    id: int
    terminal_id: str
    desktop: str
    user: str | None
    started: float
    ended: float | None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log; ``id`` increases in the order of writing."""

    id: int
    time: float
    actor: str
    action: str
    subject: str
    detail: str


@runtime_checkable
class Store(Protocol):
    """Everything the broker needs to remember, and nothing more."""

    def atomic(self) -> AbstractContextManager[None]:
        """A transaction around several calls; nesting joins the outer one."""
        ...

    def close(self) -> None: ...

    # Terminals: what each terminal said about itself when it last connected.

    def upsert_terminal(self, terminal: Terminal) -> None: ...

    def get_terminal(self, terminal_id: str) -> Terminal | None: ...

    def list_terminals(self) -> list[Terminal]:
        """Ordered by id."""
        ...

    def delete_terminal(self, terminal_id: str) -> bool:
        """Forget a terminal's record; whether there was one.  Its pairing,
        pairing code and session history are untouched."""
        ...

    # Desktops: registered by the relay from its configuration.

    def upsert_desktop(self, desktop: Desktop) -> None: ...

    def get_desktop(self, name: str) -> Desktop | None: ...

    def list_desktops(self) -> list[Desktop]:
        """Ordered by name."""
        ...

    def delete_desktop(self, name: str) -> bool:
        """Forget a desktop: its record and its pairings; users who owned it own
        none.  Whether there was one.  Session history is untouched."""
        ...

    # Pairings.

    def pair(self, pairing: Pairing) -> None:
        """Store ``pairing``, replacing the terminal's and the desktop's previous
        pairings.  The desktop must exist (ConflictError otherwise)."""
        ...

    def unpair(self, terminal_id: str) -> Pairing | None:
        """Remove the terminal's pairing; return it, or None if there was none."""
        ...

    def pairing_for(self, terminal_id: str) -> Pairing | None: ...

    def pairing_for_desktop(self, desktop: str) -> Pairing | None: ...

    def list_pairings(self) -> list[Pairing]:
        """Ordered by terminal id."""
        ...

    # Pairing codes: one per terminal at most.

    def put_pairing_code(self, code: PairingCode) -> None:
        """Store ``code``, replacing the terminal's previous code.  ConflictError
        if another terminal holds the same code."""
        ...

    def get_pairing_code(self, code: str) -> PairingCode | None:
        """The code as stored, expired or not."""
        ...

    def pairing_code_for(self, terminal_id: str) -> PairingCode | None: ...

    def list_pairing_codes(self) -> list[PairingCode]:
        """Every pairing code, expired ones included (one read for many terminals)."""
        ...

    def consume_pairing_code(self, code: str, now: float) -> PairingCode | None:
        """Delete and return ``code`` if it exists and has not expired at ``now``.

        Atomic: of two callers racing for one code, one gets it."""
        ...

    def record_code_failure(self, code: str) -> int:
        """Count a wrong try aimed at ``code``; return the new count (0 if gone)."""
        ...

    def delete_pairing_code(self, code: str) -> None: ...

    def delete_expired_pairing_codes(self, now: float) -> int:
        """Delete codes whose expiry is at or before ``now``; return how many."""
        ...

    # Users.  The store keeps an opaque hash; thinserve.secrets makes and checks it.

    def add_user(self, user: User, secret_hash: str) -> None:
        """ConflictError if the name is taken or the desktop does not exist."""
        ...

    def get_user(self, name: str) -> User | None: ...

    def list_users(self) -> list[User]:
        """Ordered by name."""
        ...

    def user_secret_hash(self, name: str) -> str | None: ...

    def set_user_secret_hash(self, name: str, secret_hash: str) -> None:
        """NotFoundError if there is no such user."""
        ...

    def set_user_desktop(self, name: str, desktop: str | None) -> None:
        """NotFoundError if there is no such user; ConflictError for an
        unknown desktop."""
        ...

    def users_with_desktop(self, desktop: str) -> list[User]: ...

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        """NotFoundError if there is no such user."""
        ...

    def delete_user(self, name: str) -> bool:
        """True if the user existed."""
        ...

    # Logins: which terminal of which node each logged-in user is at, so that
    # a login at one node ends the user's login at another (hot-desking).

    def set_login(self, login: Login) -> Login | None:
        """Record ``login``, replacing the user's previous one; return the one
        replaced (None if there was none)."""
        ...

    def get_login(self, user: str) -> Login | None: ...

    def delete_login(
        self, user: str, terminal_id: str | None = None, node: str | None = None
    ) -> bool:
        """Remove the user's login if it is at ``terminal_id`` and ``node`` (each
        when given); whether one was removed."""
        ...

    def list_logins(self, node: str | None = None) -> list[Login]:
        """Ordered by user; only the logins at ``node`` when given."""
        ...

    # Admin accounts of the dashboard, and their API tokens.  Hashes are opaque
    # here: thinserve.secrets hashes passwords, thinserve.dashboard.accounts tokens.

    def add_admin(self, admin: Admin, secret_hash: str) -> None:
        """ConflictError if the name is taken."""
        ...

    def get_admin(self, name: str) -> Admin | None: ...

    def list_admins(self) -> list[Admin]:
        """Ordered by name."""
        ...

    def admin_secret_hash(self, name: str) -> str | None: ...

    def set_admin_secret_hash(self, name: str, secret_hash: str) -> None:
        """NotFoundError if there is no such admin."""
        ...

    def set_admin_disabled(self, name: str, disabled: bool) -> None:
        """NotFoundError if there is no such admin."""
        ...

    def set_admin_role(self, name: str, role: str) -> None:
        """NotFoundError if there is no such admin."""
        ...

    def record_admin_failure(self, name: str, now: float, locked_until: float) -> int:
        """Count a wrong password for ``name``; return the new count (0 if there
        is no such admin).  The count goes on past a lock: only a right password
        or ``clear_admin_failures`` resets it.  A lock that has expired at
        ``now`` is dropped; a ``locked_until`` later than the stored one locks
        the account until then (0: no new lock)."""
        ...

    def clear_admin_failures(self, name: str) -> None:
        """Reset the count of wrong passwords and lift any lock."""
        ...

    def delete_admin(self, name: str) -> bool:
        """Remove an admin and its API tokens; True if it existed."""
        ...

    def add_token(self, token: ApiToken, token_hash: str) -> None:
        """ConflictError if the id is taken, the admin has a token with that
        label already, or there is no such admin."""
        ...

    def token_hash(self, token_id: str) -> str | None: ...

    def get_token(self, token_id: str) -> ApiToken | None: ...

    def list_tokens(self, admin: str | None = None) -> list[ApiToken]:
        """Ordered by admin, then label; only ``admin``'s when given."""
        ...

    def delete_token(self, token_id: str) -> bool:
        """True if the token existed."""
        ...

    def touch_token(self, token_id: str, when: float) -> None:
        """Note when the token was last used (nothing if it is gone)."""
        ...

    # Session history.

    def start_session(
        self, terminal_id: str, desktop: str, user: str | None, started: float
    ) -> int:
        """Record a session start; return its id."""
        ...

    def end_session(self, session_id: int, ended: float) -> None: ...

    def end_open_sessions(self, ended: float) -> int:
        """End every session still open (after a restart); return how many."""
        ...

    def list_sessions(
        self, limit: int = 100, terminal_id: str | None = None, before_id: int | None = None
    ) -> list[SessionRecord]:
        """Newest first; with ``before_id``, only those with a smaller id (the
        page before)."""
        ...

    # Audit log: append only.

    def append_audit(
        self, time: float, actor: str, action: str, subject: str, detail: str = ""
    ) -> AuditEntry: ...

    def list_audit(
        self, after_id: int = 0, limit: int = 1000, subject: str | None = None
    ) -> list[AuditEntry]:
        """Entries with id > ``after_id``, oldest first, at most ``limit``."""
        ...
