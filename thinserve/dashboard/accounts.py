"""The dashboard's admin accounts: passwords, limits on guessing, API tokens.

Passwords are kept as Argon2id hashes (thinserve.secrets); hashing and
checking take a noticeable fraction of a second of CPU, so both run in the
Verifier's worker threads, never on the reactor thread, and at most
MAX_CHECKS of them wait or run at once (one per account name and per
address).  An unknown name costs a check against a dummy hash, so it takes
as long as a real one and gets the same answer.

Guessing is slowed per account name and per source address: after
BACKOFF_AFTER wrong passwords in a row every further try waits, 1 s then
doubling up to 5 minutes (429 with ``retry_after``).  After LOCK_AFTER wrong
passwords in a row the account is locked for 15 minutes (423), and each
further wrong password locks it again; the lock is kept in the store, so a
restart does not lift it.  A right password or ``thinserve admins unlock``
does.

An API token is ``tst_ID_SECRET``; the store keeps only the SHA-256 of the
whole token, so a copy of the database does not hold usable tokens.  A token
acts with its admin's role, and stops working once its admin is disabled or
removed.  Everything here runs on the reactor thread, except the hashing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..admin.errors import ApiError, not_found
from ..admin.principal import ROLES, Principal
from ..broker.core import append_audit
from ..secrets import SecretHasher
from ..store.base import Admin, ApiToken, ConflictError, Store
from ..verifier import Verifier

MIN_PASSWORD, MAX_PASSWORD = 10, 128
BACKOFF_AFTER = 3  # wrong passwords in a row before each further try waits
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0  # seconds: the first wait, doubling up to this
LOCK_AFTER = 10  # wrong passwords in a row that lock the account
LOCK_SECONDS = 15 * 60.0
MAX_CHECKS = 8  # password checks waiting or running at once, over all accounts
MAX_KEYS = 10_000  # names and addresses whose failures are remembered
TOKEN_PREFIX = "tst_"
TOUCH_EVERY = 60.0  # seconds between writes of a token's last use
NAME_RULE = "1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
LABEL_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
WRONG = "wrong name or password"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN = re.compile(r"tst_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Clock = Callable[[], float]
Listener = Callable[[str], None]


@dataclass
class _Streak:
    count: int  # wrong passwords in a row
    last: float  # when the last of them came


class Streaks:
    """Wrong passwords in a row per key (an account name or an address), in memory.

    Bounded: beyond ``max_keys`` keys the one that failed longest ago is forgotten.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Streak] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must wait before its next try; 0.0 when it may try now."""
        streak = self._keys.get(key)
        if streak is None or streak.count < BACKOFF_AFTER:
            return 0.0
        delay = min(BACKOFF_FIRST * 2 ** min(streak.count - BACKOFF_AFTER, 30), BACKOFF_MAX)
        return max(streak.last + delay - now, 0.0)

    def locked_until(self, key: str) -> float:
        """When a lock for ``key`` ends, had it LOCK_AFTER failures in a row; else 0."""
        streak = self._keys.get(key)
        if streak is None or streak.count < LOCK_AFTER:
            return 0.0
        return streak.last + LOCK_SECONDS

    def failed(self, key: str, now: float) -> int:
        streak = self._keys.pop(key, None) or _Streak(0, now)
        streak.count, streak.last = streak.count + 1, now
        self._keys[key] = streak
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return streak.count

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)


class Accounts:
    """Admin accounts and API tokens over the store; see the module's docstring."""

    def __init__(
        self,
        store: Store,
        hasher: SecretHasher,
        runner: Verifier,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.runner = runner
        self.clock = clock
        self.by_name = Streaks()
        self.by_source = Streaks()
        self.checking: set[str] = set()  # "name:..." and "source:..." keys with a check running
        # Called with an admin's name when its password changes, or it is
        # disabled or removed: its dashboard sessions end.
        self.on_revoke: list[Listener] = []

    # -- logging in ---------------------------------------------------------------------
    def login(self, name: str, password: str, source: str) -> Deferred[Admin]:
        """Check ``password`` for ``name`` (from address ``source``) in a worker thread.

        Fires with the Admin, or fails with ApiError: 401 wrong name or password
        (the same for unknown names), 403 disabled, 423 locked, 429 wait.
        """
        now = self.clock()
        self._may_try(name, source, now)
        stored = self.store.admin_secret_hash(name) if _NAME.fullmatch(name) else None
        keys = {"name:" + name, "source:" + source}
        self.checking |= keys
        check = self.runner.run(lambda: self.hasher.verify(stored, password))

        def done(result: bool | Failure) -> bool | Failure:
            self.checking -= keys
            return result

        check.addBoth(done)
        return check.addCallback(lambda right: self._checked(name, source, stored, right))

    def _may_try(self, name: str, source: str, now: float) -> None:
        admin = self.store.get_admin(name)
        locked = admin.locked_until if admin is not None else self.by_name.locked_until(name)
        if locked > now:
            raise _locked(name, locked - now)
        wait = max(self.by_name.wait(name, now), self.by_source.wait(source, now))
        busy = {"name:" + name, "source:" + source} & self.checking
        if busy or len(self.checking) >= 2 * MAX_CHECKS:
            wait = max(wait, 1.0)
        if wait > 0:
            seconds = math.ceil(wait)
            raise ApiError(
                429,
                f"too many login attempts; try again in {seconds} s",
                "each wrong password makes the next try wait longer",
                code="rate_limited",
                retry_after=seconds,
            )

    def _checked(self, name: str, source: str, stored: str | None, right: bool) -> Admin:
        """The answer to a finished check, back on the reactor thread."""
        admin = self.store.get_admin(name)
        # A password changed during the check no longer counts as right.
        if right and admin is not None and self.store.admin_secret_hash(name) == stored:
            if admin.disabled:
                raise ApiError(
                    403,
                    f"admin account {name!r} is disabled",
                    "ask an administrator to enable it (`thinserve admins enable NAME`)",
                    code="forbidden",
                )
            self.by_name.clear(name)
            self.by_source.clear(source)
            if admin.failures or admin.locked_until:
                self.store.clear_admin_failures(name)
            self.audit("web:" + name, "admin-login", name, f"from {source}")
            return self.store.get_admin(name) or admin
        raise self._wrong(name, source, admin)

    def _wrong(self, name: str, source: str, admin: Admin | None) -> ApiError:
        now = self.clock()
        count = self.by_name.failed(name, now)
        self.by_source.failed(source, now)
        with self.store.atomic():
            if admin is not None:
                count = admin.failures + 1
                lock = now + LOCK_SECONDS if count >= LOCK_AFTER else 0.0
                count = self.store.record_admin_failure(name, now, lock)
            detail = f"from {source}, {count} wrong in a row"
            if count >= LOCK_AFTER:
                detail += f", locked for {LOCK_SECONDS / 60:.0f} minutes"
            self.audit("web", "admin-login-failed", name, detail)
        return ApiError(
            401,
            WRONG,
            f"check both; after {BACKOFF_AFTER} wrong tries each further try waits longer",
            code="unauthenticated",
        )

    # -- API tokens -----------------------------------------------------------------------
    def token_principal(self, token: str) -> Principal:
        """Who ``token`` acts for; ApiError 401 when it is not a valid token."""
        match = _TOKEN.fullmatch(token)
        record = self.store.get_token(match[1]) if match else None
        stored = self.store.token_hash(record.id) if record else None
        if record is None or stored is None or not hmac.compare_digest(stored, token_hash(token)):
            raise ApiError(
                401,
                "the API token is not valid",
                "it may have been removed; see `thinserve tokens list`",
                code="unauthenticated",
            )
        admin = self.store.get_admin(record.admin)
        if admin is None or admin.disabled:
            raise ApiError(
                401,
                f"the API token's admin account {record.admin!r} is disabled",
                "ask an administrator to enable it (`thinserve admins enable NAME`)",
                code="unauthenticated",
            )
        now = self.clock()
        if record.last_used is None or now - record.last_used >= TOUCH_EVERY:
            self.store.touch_token(record.id, now)
        return Principal(f"token:{admin.name}/{record.label}", admin.name, admin.role)

    def add_token(self, admin: str, label: str, actor: str) -> tuple[ApiToken, str]:
        """A new token for ``admin``: its record and the token itself, shown only now."""
        if not _LABEL.fullmatch(label):
            raise ApiError(400, f"a token label is {LABEL_RULE}", "e.g. --label grafana")
        self.known(admin)
        if any(t.label == label for t in self.store.list_tokens(admin)):
            raise ApiError(
                409,
                f"admin {admin!r} has a token labelled {label!r} already",
                "choose another label, or remove that token first (`thinserve tokens list`)",
                code="conflict",
            )
        token_id = secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        record = ApiToken(token_id, admin, label, self.clock(), None)
        with self.store.atomic():
            try:
                self.store.add_token(record, token_hash(token))
            except ConflictError as exc:
                raise ApiError(409, f"the token could not be stored: {exc}", "try again") from None
            self.audit(actor, "token-add", admin, f"token {token_id} label {label}")
        return record, token

    def remove_token(self, token_id: str, actor: str) -> ApiToken:
        record = self.store.get_token(token_id)
        if record is None:
            raise ApiError(
                404, f"no API token {token_id!r}", "see `thinserve tokens list`", code="not_found"
            )
        with self.store.atomic():
            self.store.delete_token(token_id)
            self.audit(
                actor, "token-remove", record.admin, f"token {token_id} label {record.label}"
            )
        return record

    # -- managing accounts --------------------------------------------------------------
    def add(self, name: str, password: str, role: str, actor: str) -> Deferred[Admin]:
        """A new admin account; the password is hashed in a worker thread."""
        if not _NAME.fullmatch(name):
            raise ApiError(400, f"an admin name is {NAME_RULE}", "choose another name")
        if role not in ROLES:
            raise ApiError(400, f"the role must be one of {', '.join(ROLES)}", "")
        check_password(password)
        if self.store.get_admin(name) is not None:
            raise _exists(name)
        hashing = self.runner.run(lambda: self.hasher.hash(password))

        def store(hashed: str) -> Admin:
            admin = Admin(name, role, self.clock())
            with self.store.atomic():
                try:
                    self.store.add_admin(admin, hashed)
                except ConflictError:
                    raise _exists(name) from None
                self.audit(actor, "admin-add", name, f"role {role}")
            return admin

        return hashing.addCallback(store)

    def set_password(self, name: str, password: str, actor: str) -> Deferred[Admin]:
        """A new password for ``name``; its dashboard sessions end."""
        self.known(name)
        check_password(password)
        hashing = self.runner.run(lambda: self.hasher.hash(password))

        def store(hashed: str) -> Admin:
            with self.store.atomic():
                self.store.set_admin_secret_hash(name, hashed)
                self.audit(actor, "admin-password", name)
            self._revoke(name)
            return self.known(name)

        return hashing.addCallback(store)

    def set_disabled(self, name: str, disabled: bool, actor: str) -> Admin:
        """Disable (sessions and tokens stop working at once) or enable an account."""
        admin = self.known(name)
        if admin.disabled != disabled:
            with self.store.atomic():
                self.store.set_admin_disabled(name, disabled)
                self.audit(actor, "admin-disable" if disabled else "admin-enable", name)
        if disabled:
            self._revoke(name)
        return self.known(name)

    def unlock(self, name: str, actor: str) -> Admin:
        """Lift a lock and forget the wrong passwords counted for ``name``."""
        self.known(name)
        with self.store.atomic():
            self.store.clear_admin_failures(name)
            self.audit(actor, "admin-unlock", name)
        self.by_name.clear(name)
        return self.known(name)

    def remove(self, name: str, actor: str) -> None:
        """Remove an account and its API tokens."""
        self.known(name)
        with self.store.atomic():
            tokens = len(self.store.list_tokens(name))
            self.store.delete_admin(name)
            self.audit(actor, "admin-remove", name, f"with {tokens} API token(s)")
        self._revoke(name)

    def known(self, name: str) -> Admin:
        """The account ``name``; ApiError 404 listing the known ones otherwise."""
        admin = self.store.get_admin(name)
        if admin is None:
            known = [a.name for a in self.store.list_admins()]
            raise not_found("admin", name, known, "see `thinserve admins list`")
        return admin

    def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        append_audit(self.store, self.clock(), actor, action, subject, detail)

    def _revoke(self, name: str) -> None:
        for listener in list(self.on_revoke):
            listener(name)


def check_password(password: str) -> None:
    """A dashboard password: MIN_PASSWORD to MAX_PASSWORD characters, none a control."""
    if (
        not isinstance(password, str)
        or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD
        or _CONTROL.search(password)
    ):
        raise ApiError(
            400,
            f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters, without control "
            "characters",
            "a few unrelated words make a good one",
        )


def token_hash(token: str) -> str:
    """What the store keeps of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _exists(name: str) -> ApiError:
    return ApiError(
        409,
        f"admin {name!r} exists already",
        "choose another name, or change its password with `thinserve admins passwd NAME`",
        code="conflict",
    )


def _locked(name: str, remaining: float) -> ApiError:
    seconds = math.ceil(remaining)
    minutes = math.ceil(seconds / 60)
    return ApiError(
        423,
        f"admin account {name!r} is locked after {LOCK_AFTER} wrong passwords in a row",
        f"it unlocks by itself in {minutes} minute(s), or an administrator runs "
        f"`thinserve admins unlock {name}`",
        code="locked",
        retry_after=seconds,
    )
