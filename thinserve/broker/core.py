"""The broker: which desktop, or which screen, each terminal shows.

Events come in (a terminal connects, a user logs in, an administrator
pairs); decisions go out as ``Change(terminal_id, assignment)`` values for
the relay to apply in order.  After every event the broker recomputes what
every connected terminal should show from what justifies it, in this order:

1. an administrator's shadow grant: the desktop, view-only;
2. a user logged in at the terminal (hot-desking): the user's desktop;
3. the terminal's pairing;
4. the terminal's pool lease;
5. otherwise the site's fallback screen (pairing code, login, or waiting
   for a pool desktop).

A desktop has one owner (a pairing, a user, or a pool), so at most one
terminal can claim control of it; a guard still refuses a second claim
should the store ever say otherwise.  When several nodes share the store,
the broker is given ``SiteClaims`` and grants control of a desktop only
while its node holds the desktop's control lease (see claims.py), and
logins are recorded in the store so that a login at one node ends the
user's login at another.  See docs/broker.md.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .. import logs, metrics
from ..desktop_state import DesktopState
from ..secrets import SecretHasher
from ..store.base import (
    ConflictError,
    Desktop,
    Login,
    Pairing,
    PairingCode,
    Store,
    StoreError,
    Terminal,
    User,
)
from ..terminal_ids import ADDRESS_PREFIX, address_of
from . import codes
from .assignment import Assignment, Change, ScreenKind, ShowDesktop, ShowScreen, _grant
from .claims import SiteClaims
from .config import BrokerConfig
from .ratelimit import FailureLimiter

log = logging.getLogger(__name__)

SYSTEM = "thinserve"  # the actor for what the broker does on its own
MAX_ID = 128
FORGET_EVERY = 3600.0  # seconds between looks for terminals to forget
DISABLED_NOTICE = "This account is disabled; ask the administrator."
IN_USE_NOTICE = "This desktop is in use at another terminal."
MOVED_NOTICE = "The session moved to another terminal."
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Holder = tuple[str, str]  # ("terminal", id) or ("user", name): who holds a pool lease


class BrokerError(Exception):
    """A request the broker refuses; the message says why."""


class NotConnectedError(BrokerError):
    """The terminal named is not connected."""


class AlreadyConnectedError(BrokerError):
    """terminal_connected for a terminal that is still connected."""


class PairingCodeError(BrokerError):
    """A pairing code was wrong, expired, used, or tried too often.

    ``changes`` must still be applied: a terminal whose code was locked
    shows a new one.
    """

    def __init__(self, message: str, changes: Sequence[Change] = ()) -> None:
        super().__init__(message)
        self.changes = list(changes)


@dataclass(frozen=True)
class TerminalInfo:
    """What a terminal says about itself.  Recorded, never trusted."""

    name: str = ""
    model: str = ""
    address: str = ""
    screen_width: int = 0
    screen_height: int = 0


@dataclass(frozen=True)
class LoginCheck:
    """The slow part of one login attempt: checking the secret with Argon2id.

    ``run`` uses only the hasher, never the broker or the store, so it may run
    in any thread; its verdict goes back to ``Broker.apply_login`` on the
    broker's thread.
    """

    terminal_id: str
    user: str
    ticket: int  # tells this attempt from every other one of the broker
    stored: str | None = field(repr=False)  # None: no such user (a dummy hash is checked)
    secret: str = field(repr=False)
    hasher: SecretHasher = field(repr=False, compare=False)
    source: str = ""  # the address the attempt came from, for the limit per source

    def run(self) -> LoginVerdict:
        """Verify the secret, and rehash it if the stored hash is out of date."""
        if not self.hasher.verify(self.stored, self.secret):
            return LoginVerdict(self, ok=False)
        rehashed = None
        if self.stored is not None and self.hasher.needs_rehash(self.stored):
            rehashed = self.hasher.hash(self.secret)
        return LoginVerdict(self, ok=True, rehashed=rehashed)


@dataclass(frozen=True)
class LoginVerdict:
    """What running a LoginCheck found: whether the secret matched, and a new
    hash to store when the old one was made with other parameters."""

    check: LoginCheck
    ok: bool
    rehashed: str | None = field(default=None, repr=False)


@dataclass
class _Connection:
    handle: Hashable | None
    source: str = ""  # the address the connection came from
    notice: str = ""  # a line for the fallback screen, e.g. why a login failed
    refusal_noted_until: float = 0.0  # rate-limited logins are audited once until then
    waiting: int | None = None  # the ticket of the login check this connection waits for
    busy_noted: int | None = None  # the check in flight a refusal here was audited for


@dataclass(frozen=True)
class BrokerState:
    """A read-only picture of the broker's live state (dashboards, tests)."""

    connected: tuple[str, ...]
    logins: dict[str, str]  # terminal -> user
    leases: dict[str, Holder]  # desktop -> holder
    watchers: dict[str, str]  # terminal -> desktop watched
    desktops: dict[str, DesktopState]
    shown: dict[str, Assignment] = field(default_factory=dict)
    checking: dict[str, str] = field(default_factory=dict)  # terminal -> user being checked
    taken: dict[str, str] = field(default_factory=dict)  # desktop -> admin viewer in control


class Broker:
    """Decides what each terminal shows.  Single-threaded: call from one thread."""

    def __init__(
        self,
        store: Store,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        hasher: SecretHasher | None = None,
        claims: SiteClaims | None = None,
    ) -> None:
        self.store = store
        self.site = claims  # None: the only node, deciding alone
        self.config = config or BrokerConfig()
        self._clock = clock
        self._hasher = hasher or SecretHasher()
        self._conns: dict[str, _Connection] = {}
        self._logins: dict[str, str] = {}
        self._watch: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # desktop -> the admin's viewer in control of it
        self._leases: dict[str, Holder] = {}
        self._waiting: list[Holder] = []
        self._states: dict[str, DesktopState] = {}
        self._progress: dict[str, float | None] = {}
        self._failures: dict[str, str] = {}  # desktop -> why it could not start
        self._shown: dict[str, Assignment] = {}
        self._controller: dict[str, str] = {}  # desktop -> terminal in control
        self._sessions: dict[str, int] = {}  # terminal -> open session record
        self._code_expiry: dict[str, float] = {}
        self._codes: dict[str, PairingCode] | None = None  # read once per settle
        self._settling = False
        self._pending: list[Change] = []
        self._renames: list[tuple[str, str]] = []
        self._next_forget = 0.0
        self._login_by_source = FailureLimiter(self.config.login_failures_per_terminal)
        self._checks: dict[int, LoginCheck] = {}  # login checks in flight, by ticket
        self._tickets = itertools.count(1)
        self._login_by_terminal = FailureLimiter(self.config.login_failures_per_terminal)
        self._login_by_user = FailureLimiter(self.config.login_failures_per_user)
        self._codes_by_actor = FailureLimiter(self.config.code_failures_per_actor)
        self._codes_total = FailureLimiter(self.config.code_failures_total)
        ended = store.end_open_sessions(self._clock())
        if ended:
            log.info("closed %d session records left open by the last run", ended)
        if claims is not None:
            for login in store.list_logins(claims.node):  # left by the last run of this node
                store.delete_login(login.user, login.terminal_id, claims.node)

    # Desktops: the relay registers its desktops and reports their state.

    def register_desktop(
        self, name: str, backend: str, state: DesktopState = DesktopState.STOPPED
    ) -> list[Change]:
        """Make ``name`` known (call for every configured desktop at startup).

        A stopped desktop is offered: it is started for the terminal given
        it.  Desktops not registered in this run are unavailable to everyone.
        """
        _check_text(name, "desktop name")
        self.store.upsert_desktop(Desktop(name, backend, self.config.pool_of(name)))
        self._states[name] = state
        self._progress[name] = None
        return self._settle()

    def desktop_state(
        self,
        desktop: str,
        state: DesktopState,
        progress: float | None = None,
        failure: str = "",
    ) -> list[Change]:
        """The relay's word on ``desktop`` (thinserve/desktop_state.py).

        While it starts its terminals show progress (0..1) if known; a held
        back or crashed desktop is unavailable, and a pool lease on it is
        given up.  ``failure``: why a crashed desktop could not start; its
        terminals are told so rather than to wait.
        """
        if desktop not in self._states:
            raise BrokerError(f"desktop {desktop!r} is not registered")
        if progress is not None:
            progress = min(max(float(progress), 0.0), 1.0)
        self._states[desktop] = state
        self._progress[desktop] = progress
        if state is DesktopState.CRASHED and failure:
            self._failures[desktop] = _printable(failure, 300)
        else:
            self._failures.pop(desktop, None)
        return self._settle()

    def unregister_desktop(self, desktop: str, actor: str = SYSTEM) -> list[Change]:
        """``desktop`` is no longer configured: nobody is shown it any more.

        Its terminal falls back to its pairing (or login, or waiting) screen;
        its record and pairing stay in the store until ``forget_desktop``, so
        configuring it again brings it back to the same terminal.
        """
        if desktop not in self._states:
            return self._take([])
        for terminal_id, watched in list(self._watch.items()):
            if watched == desktop:
                del self._watch[terminal_id]
                self._audit(actor, "unshadow", terminal_id, f"desktop {desktop} removed")
        del self._states[desktop]
        self._progress.pop(desktop, None)
        self._failures.pop(desktop, None)
        self._audit(actor, "desktop-removed", desktop, "no longer configured")
        return self._settle()

    def is_registered(self, desktop: str) -> bool:
        return desktop in self._states

    def reconfigure(self, config: BrokerConfig, actor: str = SYSTEM) -> list[Change]:
        """Run by ``config`` from now on (a reload); every terminal is decided again.

        Failure counts are kept unless their limit changed; pool leases are
        kept while their desktop stays in the pool the holder needs.
        """
        old, self.config = self.config, config
        for name, limiter in self._limiter_names():
            if getattr(old, name) != getattr(config, name):
                setattr(self, limiter, FailureLimiter(getattr(config, name)))
        with self.store.atomic():
            for desktop in self._states:
                record = self.store.get_desktop(desktop)
                backend = record.backend if record is not None else "vnc"
                self.store.upsert_desktop(Desktop(desktop, backend, config.pool_of(desktop)))
            if old != config:
                self._audit(actor, "broker-policy", "broker", "reloaded")
        return self._settle()

    def _limiter_names(self) -> list[tuple[str, str]]:
        """(config field, attribute) of each failure limiter."""
        return [
            ("login_failures_per_terminal", "_login_by_terminal"),
            ("login_failures_per_terminal", "_login_by_source"),
            ("login_failures_per_user", "_login_by_user"),
            ("code_failures_per_actor", "_codes_by_actor"),
            ("code_failures_total", "_codes_total"),
        ]

    def forget_desktop(self, desktop: str, actor: str) -> None:
        """Remove a desktop that is no longer configured from the store: its
        record and its pairings; users who owned it own none."""
        _check_text(actor, "actor")
        if desktop in self._states:
            raise BrokerError(
                f"desktop {desktop!r} is configured; remove it from the config file "
                "and reload first"
            )
        with self.store.atomic():
            if self.store.get_desktop(desktop) is None:
                raise BrokerError(f"desktop {desktop!r} is not registered")
            paired = [p.terminal_id for p in self.store.list_pairings() if p.desktop == desktop]
            owners = [u.name for u in self.store.users_with_desktop(desktop)]
            self.store.delete_desktop(desktop)
            for terminal_id in paired:
                self._audit(actor, "unpair", terminal_id, f"desktop {desktop} forgotten")
            for user in owners:
                self._audit(actor, "user-desktop", user, f"desktop {desktop} forgotten")
            self._audit(actor, "desktop-forget", desktop, _forgotten(paired, owners))

    # Terminals.

    def terminal_connected(
        self,
        terminal_id: str,
        info: TerminalInfo | None = None,
        connection: Hashable | None = None,
        notice: str = "",
    ) -> Assignment:
        """A terminal connected; return what it must show.

        A new terminal never changes what another terminal shows, so this
        returns one assignment rather than a list of changes.  If
        ``terminal_id`` is still connected (a reboot the old TCP connection
        has not noticed, or another device using the same id), this raises
        AlreadyConnectedError: the relay closes the old connection and calls
        ``terminal_disconnected(terminal_id, old_handle)`` first, applying
        what that returns.  Pass ``connection`` handles so that an old
        connection reported closed late cannot disconnect a newer one.
        When the store cannot save the terminal (a StoreError, e.g. its disk
        is full) the terminal is not connected and nothing of it is kept.
        """
        _check_text(terminal_id, "terminal id")
        if terminal_id in self._conns:
            raise AlreadyConnectedError(
                f"terminal {terminal_id!r} is already connected; "
                "call terminal_disconnected for the old connection first"
            )
        info = info or TerminalInfo()
        now = self._clock()
        with self.store.atomic():
            if self.store.get_terminal(terminal_id) is None:
                self._audit(SYSTEM, "terminal-new", terminal_id, _describe(info))
            self.store.upsert_terminal(_terminal(terminal_id, info, now))
        self._conns[terminal_id] = _Connection(connection, info.address, notice=notice)
        try:
            if self._settle_alone(terminal_id):
                return self._shown[terminal_id]
            settled = self._settle(refresh=(terminal_id,))
        except StoreError:  # e.g. its pairing code could not be saved: it never connected
            del self._conns[terminal_id]
            self._code_expiry.pop(terminal_id, None)
            raise
        others = [c for c in settled if c.terminal_id != terminal_id]
        if others:  # cannot happen by the rules above; never lose a change if it does
            log.error("connecting %s changed other terminals: %s", terminal_id, others)
            self._pending.extend(others)
        return self._shown[terminal_id]

    def _settle_alone(self, terminal_id: str) -> bool:
        """Decide a new terminal that claims nothing (no pairing, no pools) on
        its own: its fallback screen.  Recomputing every terminal for each
        arrival would make a flood of connections cost O(n^2)."""
        if self.config.unknown_terminal == "pool" or self.store.pairing_for(terminal_id):
            return False
        now = self._clock()
        shown = self._fallback(terminal_id, now, refresh=(terminal_id,))
        if shown.code is None:
            self._code_expiry.pop(terminal_id, None)
        self._shown[terminal_id] = shown
        return True

    def is_connected(self, terminal_id: str) -> bool:
        return terminal_id in self._conns

    def terminal_disconnected(
        self, terminal_id: str, connection: Hashable | None = None
    ) -> list[Change]:
        """A terminal went away: its login ends, its pool lease is freed."""
        conn = self._conns.get(terminal_id)
        if conn is None or (connection is not None and conn.handle != connection):
            return self._take([])
        alone = self._claims_nothing(terminal_id)
        self._drop(terminal_id, "terminal disconnected")
        if alone:
            del self._shown[terminal_id]
            self._code_expiry.pop(terminal_id, None)
            return self._take([])
        return self._settle()

    def _claims_nothing(self, terminal_id: str) -> bool:
        """Whether a terminal's leaving can change nobody else's screen: it shows
        a screen (no desktop, so no session and no lease), nobody is logged in
        there, and terminals get no pool desktops.  Re-deciding every terminal
        for each departure would make a flood's end cost O(n^2)."""
        return (
            terminal_id in self._shown
            and not isinstance(self._shown[terminal_id], ShowDesktop)
            and terminal_id not in self._logins
            and self.config.unknown_terminal != "pool"
            and (self.site is None or terminal_id not in self._controller.values())
        )

    def forget_terminal(self, terminal_id: str, why: str) -> None:
        """Forget a terminal that is gone for good (one that lasted one
        connection): its pairing, its pairing code and its record."""
        if terminal_id in self._conns:
            raise BrokerError(f"terminal {terminal_id!r} is still connected")
        with self.store.atomic():
            old = self.store.unpair(terminal_id)
            if old is not None:
                self._audit(SYSTEM, "unpair", terminal_id, f"desktop {old.desktop}, {why}")
            code = self.store.pairing_code_for(terminal_id)
            if code is not None:
                self.store.delete_pairing_code(code.code)
            self.store.delete_terminal(terminal_id)

    def take_renames(self) -> list[tuple[str, str]]:
        """Live connections that took another terminal id since the last call."""
        renames, self._renames = self._renames, []
        return renames

    def assignment(self, terminal_id: str) -> Assignment:
        """What a connected terminal shows now (NotConnectedError otherwise)."""
        if terminal_id not in self._shown:
            raise NotConnectedError(f"terminal {terminal_id!r} is not connected")
        return self._shown[terminal_id]

    def refresh(self) -> list[Change]:
        """Another node changed the shared store (a pairing, a user, a desktop):
        decide again for every connected terminal, from what is stored now.
        Pairing codes already on screens stay.  With site claims, what other
        nodes hold is read again and logins another node took or ended end here."""
        if self.site is not None:
            self.site.stale()
        self._logins_gone()
        return self._settle(refresh=())

    def lapsed_control(self) -> list[Change]:
        """With site claims: terminals in control of a desktop whose control lease
        this node no longer holds (not renewed in time) show UNAVAILABLE at once.

        Touches the store only to close their sessions, and goes on when it
        cannot: a node cut off from the database must stop granting control
        before another node may take the lease.  The hub calls it before
        every ``tick``; the next decision grants control again if the lease
        can be taken again.
        """
        if self.site is None:
            return []
        held = self.site.held()
        now = self._clock()
        changes: list[Change] = []
        store_works = True
        for terminal_id, shown in list(self._shown.items()):
            if not isinstance(shown, ShowDesktop) or not shown.control:
                continue
            if held.get(shown.desktop) == terminal_id:
                continue
            log.warning("terminal %s: control of %s lapsed", terminal_id, shown.desktop)
            screen = self._view_lapsed(shown.desktop)
            self._shown[terminal_id] = screen
            if self._controller.get(shown.desktop) == terminal_id:
                del self._controller[shown.desktop]
            if store_works:  # one try: a store out of reach costs its timeout once
                try:
                    self._end_session(terminal_id, now)
                except StoreError as exc:  # closed when the next broker starts
                    log.warning("could not close the session of %s: %s", terminal_id, exc)
                    store_works = False
            changes.append(Change(terminal_id, screen))
        return changes

    def _view_lapsed(self, desktop: str) -> ShowScreen:
        message = "The desktop is not available. Please wait or ask the administrator."
        return ShowScreen(ScreenKind.UNAVAILABLE, message, desktop=desktop)

    def tick(self) -> list[Change]:
        """Expire pairing codes and refresh the screens showing them.

        Call every few seconds, or at ``next_deadline()``.
        """
        now = self._clock()
        self.store.delete_expired_pairing_codes(now)
        for limiter in self._limiters():
            limiter.prune(now)
        if now >= self._next_forget:
            self._next_forget = now + FORGET_EVERY
            self.forget_unpaired(now - self.config.forget_unpaired_after)
        self._logins_gone()
        return self._settle()

    def forget_unpaired(self, seen_before: float) -> int:
        """Forget terminals never paired and not connected since ``seen_before``."""
        paired = {p.terminal_id for p in self.store.list_pairings()}
        stale = [
            t.id
            for t in self.store.list_terminals()
            if t.last_seen < seen_before and t.id not in paired and t.id not in self._conns
        ]
        with self.store.atomic():
            for terminal_id in stale:
                self.store.delete_terminal(terminal_id)
        if stale:
            log.info("forgot %d terminals never paired and not seen for a while", len(stale))
        return len(stale)

    def next_deadline(self) -> float | None:
        """When the earliest pairing code on screen expires, if any."""
        return min(self._code_expiry.values(), default=None)

    def waiting_count(self) -> int:
        """How many connected terminals show a screen rather than a desktop
        (counted without copying the state, as ``snapshot`` would)."""
        return sum(not isinstance(a, ShowDesktop) for a in self._shown.values())

    def snapshot(self) -> BrokerState:
        return BrokerState(
            connected=tuple(self._conns),
            logins=dict(self._logins),
            leases=dict(self._leases),
            watchers=dict(self._watch),
            desktops=dict(self._states),
            taken=dict(self._taken),
            shown=dict(self._shown),
            checking={c.terminal_id: c.user for c in self._checks.values()},
        )

    # Hot-desking.

    def login(self, terminal_id: str, user: str, secret: str) -> list[Change]:
        """A user logs in at a terminal; the secret is checked in this thread.

        Success: the user's desktop moves to this terminal; the terminal
        that had it falls back to its login (or pairing) screen.  Failure:
        the login screen says why.  Failures are rate-limited per terminal
        and per user name, and every attempt is audited.

        The relay does the same in three steps, so that the slow Argon2
        check runs in a worker thread: ``prepare_login``, ``LoginCheck.run``
        there, then ``apply_login``.
        """
        prepared = self.prepare_login(terminal_id, user, secret)
        if isinstance(prepared, LoginCheck):
            return self.apply_login(prepared.run())
        return prepared

    def prepare_login(self, terminal_id: str, user: str, secret: str) -> LoginCheck | list[Change]:
        """The first step of a login: check the limits, fetch the stored hash.

        Returns the check to run, which the terminal now waits for; or the
        changes to apply when the attempt is refused unchecked: rate-limited,
        or a login at this terminal or for this user name is still being
        checked (one check per terminal and per user at a time keeps the
        limits exact).
        """
        conn = self._connected(terminal_id)
        if not self.config.hot_desk:
            raise BrokerError("hot-desking is off")
        now = self._clock()
        if self._rate_limited(conn, terminal_id, user, now) or self._busy(conn, terminal_id, user):
            return self._settle()
        stored = self.store.user_secret_hash(user) if _USER_NAME.fullmatch(user) else None
        ticket = next(self._tickets)
        check = LoginCheck(terminal_id, user, ticket, stored, secret, self._hasher, conn.source)
        self._checks[check.ticket] = check
        conn.waiting = check.ticket
        return check

    def apply_login(self, verdict: LoginVerdict) -> list[Change]:
        """The last step of a login: act on a check's verdict, once.

        A wrong secret counts against the limits and is audited, even when
        the terminal no longer waits.  A right one logs the user in only if
        the terminal still waits for this very check (the same connection,
        not kicked, shadowed, paired or unpaired meanwhile) and the user's
        stored hash is the one checked; otherwise the attempt is audited as
        ``login-cancelled`` and nothing else happens.
        """
        check = self._finish(verdict.check)
        conn = self._waiter(check)
        if not verdict.ok:
            self._login_failed(conn, check, self._clock())
            return self._settle()
        stale = self._stale(check, conn)
        if stale or conn is None:
            self._audit(f"user:{check.user}", "login-cancelled", check.terminal_id, stale)
            if conn is not None:
                conn.notice = "The login did not complete. Please try again."
            return self._settle()
        if verdict.rehashed is not None:
            self.store.set_user_secret_hash(check.user, verdict.rehashed)
        return self._login_ok(conn, check.terminal_id, check.user)

    def abandon_login(self, check: LoginCheck, why: str) -> list[Change]:
        """Forget a check that gave no verdict (its thread failed).  Not a failure."""
        self._finish(check)
        conn = self._waiter(check)
        if conn is not None:
            conn.notice = "The login could not be checked. Please try again."
        actor = f"user:{_printable(check.user, 64)}"
        self._audit(actor, "login-cancelled", check.terminal_id, _printable(why, 200))
        return self._settle()

    def prepare_credentials(self, source: str, user: str, secret: str) -> LoginCheck | str:
        """A user name and password given while connecting (VeNCrypt Plain).

        Returns the check to run (then ``credentials_checked``), or why the
        attempt is refused unchecked: hot-desking is off, too many failures
        from ``source`` or for ``user``, or a check for either is in flight.
        """
        if not self.config.hot_desk:
            return "User logins are not enabled on this server."
        now = self._clock()
        subject = f"from {_printable(source, 100)}"
        wait = self._login_wait(subject, user, source, now)
        actor = f"user:{_printable(user, 64)}"
        if wait > 0:
            self._audit(actor, "login-refused", subject, f"rate limited for {wait} s")
            return f"Too many failed attempts. Try again in {wait} seconds."
        if self._in_flight(subject, user) is not None:
            self._audit(actor, "login-refused", subject, "another login is being checked")
            return "Another login is being checked. Try again in a moment."
        stored = self.store.user_secret_hash(user) if _USER_NAME.fullmatch(user) else None
        check = LoginCheck(subject, user, next(self._tickets), stored, secret, self._hasher, source)
        self._checks[check.ticket] = check
        return check

    def credentials_checked(self, verdict: LoginVerdict) -> str | None:
        """Act on a check from ``prepare_credentials``: None if the user may log
        in (then ``login_verified`` once connected), else the refusal."""
        check = self._finish(verdict.check)
        actor = f"user:{_printable(check.user, 64)}"
        if not verdict.ok:
            self._login_failed(None, check, self._clock())
            return "Wrong user name or password."
        if self._disabled(check.user):
            self._audit(actor, "login-failed", check.terminal_id, "the account is disabled")
            return DISABLED_NOTICE
        if self._own_desktop(check.user) is None and self.config.user_pool is None:
            self._audit(actor, "login-failed", check.terminal_id, "no desktop for this user")
            return f"No desktop is set up for {check.user}; ask the administrator."
        if verdict.rehashed is not None and self.store.user_secret_hash(check.user) == check.stored:
            self.store.set_user_secret_hash(check.user, verdict.rehashed)
        return None

    def login_verified(self, terminal_id: str, user: str) -> list[Change]:
        """Log in ``user``, whose password the connection's handshake checked."""
        return self._login_ok(self._connected(terminal_id), terminal_id, user)

    def logout(self, terminal_id: str) -> list[Change]:
        """The user at ``terminal_id`` logs out; the terminal falls back."""
        user = self._pop_login(terminal_id)
        if user is None:
            return self._take([])
        self._audit(f"user:{user}", "logout", terminal_id)
        self._conns[terminal_id].notice = ""
        return self._settle()

    def _rate_limited(self, conn: _Connection, terminal_id: str, user: str, now: float) -> bool:
        wait = self._login_wait(terminal_id, user, conn.source, now)
        if wait <= 0:
            return False
        if now >= conn.refusal_noted_until:  # one audit line per lockout, not per try
            actor = f"user:{_printable(user, 64)}"
            self._audit(actor, "login-refused", terminal_id, f"rate limited for {wait} s")
            conn.refusal_noted_until = now + wait
        conn.notice = f"Too many failed attempts. Try again in {wait} seconds."
        return True

    def _login_wait(self, terminal_id: str, user: str, source: str, now: float) -> int:
        """Seconds until a login may be tried at this terminal, for this user,
        from this address (each connection of a keyless viewer is a terminal
        of its own, so the address limit is what a reconnecting guesser meets)."""
        wait = max(
            self._login_by_terminal.retry_after(terminal_id, now),
            self._login_by_user.retry_after(_user_key(user), now),
            self._login_by_source.retry_after(source, now) if source else 0.0,
        )
        return math.ceil(wait)

    def _busy(self, conn: _Connection, terminal_id: str, user: str) -> bool:
        """Whether a check for this terminal or user name is in flight; audited
        once per connection and check."""
        ticket = self._in_flight(terminal_id, user)
        if ticket is None:
            return False
        if conn.busy_noted != ticket:
            actor = f"user:{_printable(user, 64)}"
            self._audit(actor, "login-refused", terminal_id, "another login is being checked")
            conn.busy_noted = ticket
        conn.notice = "Another login is being checked. Try again in a moment."
        return True

    def _in_flight(self, terminal_id: str, user: str) -> int | None:
        """The ticket of a check in flight for this terminal or user name, if any."""
        key = _user_key(user)
        for ticket, check in self._checks.items():
            if check.terminal_id == terminal_id or _user_key(check.user) == key:
                return ticket
        return None

    def _finish(self, check: LoginCheck) -> LoginCheck:
        """Take ``check`` out of the checks in flight (BrokerError if it is not in)."""
        if self._checks.get(check.ticket) is not check:
            raise BrokerError("that login check is not in flight; was it applied already?")
        del self._checks[check.ticket]
        return check

    def _waiter(self, check: LoginCheck) -> _Connection | None:
        """The connection waiting for ``check``, which stops waiting; None if none is."""
        conn = self._conns.get(check.terminal_id)
        if conn is None or conn.waiting != check.ticket:
            return None
        conn.waiting = None
        return conn

    def _stale(self, check: LoginCheck, conn: _Connection | None) -> str:
        """Why a right secret must not log in after all; empty if it may."""
        if conn is None:
            return "the terminal stopped waiting for this login"
        if self.store.user_secret_hash(check.user) != check.stored:
            return "the user's secret changed while it was checked"
        return ""

    def _stop_waiting(self, terminal_id: str) -> None:
        """An administrator changed what ``terminal_id`` shows: a login being
        checked there will not apply."""
        conn = self._conns.get(terminal_id)
        if conn is not None:
            conn.waiting = None

    def _login_failed(self, conn: _Connection | None, check: LoginCheck, now: float) -> None:
        self._login_by_terminal.failed(check.terminal_id, now)
        self._login_by_user.failed(_user_key(check.user), now)
        if check.source:
            self._login_by_source.failed(check.source, now)
        actor = f"user:{_printable(check.user, 64)}"
        self._audit(actor, "login-failed", check.terminal_id, "wrong secret")
        log.warning(
            "login of %s at terminal %s failed: wrong secret",
            actor,
            check.terminal_id,
            extra=logs.fields(terminal=check.terminal_id, event="login-failed"),
        )
        if conn is not None:
            conn.notice = "Wrong user name or password."

    def _login_ok(self, conn: _Connection, terminal_id: str, user: str) -> list[Change]:
        actor = f"user:{user}"
        if self._disabled(user):
            self._audit(actor, "login-failed", terminal_id, "the account is disabled")
            conn.notice = DISABLED_NOTICE
            return self._settle()
        if self._own_desktop(user) is None and self.config.user_pool is None:
            self._audit(actor, "login-failed", terminal_id, "no desktop for this user")
            conn.notice = f"No desktop is set up for {user}; ask the administrator."
            return self._settle()
        self._login_by_user.clear(_user_key(user))
        with self.store.atomic():
            self._end_login_elsewhere(terminal_id, user)
            self._watch.pop(terminal_id, None)
            self._logins[terminal_id] = user
            conn.notice = ""
            self._audit(actor, "login", terminal_id)
        log.info(
            "user %s logged in at terminal %s",
            user,
            terminal_id,
            extra=logs.fields(terminal=terminal_id, user=user, event="login"),
        )
        return self._settle()

    def _end_login_elsewhere(self, terminal_id: str, user: str) -> None:
        """``user`` logs in at ``terminal_id``: their login at another terminal
        ends, and so does another user's here.  With site claims the user's
        login row moves here too; the node it was at ends it there when it
        hears (``_logins_gone``)."""
        previous = self._terminal_of(user)
        if previous is not None and previous != terminal_id:
            del self._logins[previous]
            self._conns[previous].notice = MOVED_NOTICE
            self._audit(f"user:{user}", "takeover", terminal_id, f"from terminal {previous}")
        replaced = self._logins.get(terminal_id)
        if replaced is not None and replaced != user:
            self._pop_login(terminal_id)
            self._audit(f"user:{replaced}", "logout", terminal_id, f"replaced by {user}")
        if self.site is not None:
            node = self.site.node
            moved = self.store.set_login(Login(user, terminal_id, node, self._clock()))
            if moved is not None and moved.node != node:
                detail = f"from terminal {moved.terminal_id} at node {moved.node}"
                self._audit(f"user:{user}", "takeover", terminal_id, detail)

    def _pop_login(self, terminal_id: str) -> str | None:
        """End the login at ``terminal_id`` here (and its row, while it is ours); the user."""
        user = self._logins.pop(terminal_id, None)
        if user is not None and self.site is not None:
            self.store.delete_login(user, terminal_id, self.site.node)
        return user

    def _logins_gone(self) -> None:
        """Logins here whose row another node took (the user logged in there) or
        removed (the user was deleted or disabled there) end here, as a local
        move does: the terminal falls back to its login screen."""
        if self.site is None or not self._logins:
            return
        rows = {(r.user, r.terminal_id) for r in self.store.list_logins(self.site.node)}
        for terminal_id, user in list(self._logins.items()):
            if (user, terminal_id) in rows:
                continue
            del self._logins[terminal_id]
            elsewhere = self.store.get_login(user)
            if elsewhere is not None:
                notice, where = MOVED_NOTICE, f"moved to node {elsewhere.node}"
            elif self._disabled(user):
                notice, where = "This account has been disabled.", "disabled at another node"
            else:
                notice, where = "The session was ended at another node.", "ended elsewhere"
            self._conns[terminal_id].notice = notice
            log.info(
                "user %s at terminal %s: the login %s",
                user,
                terminal_id,
                where,
                extra=logs.fields(terminal=terminal_id, user=user, event="logout"),
            )

    # Users (administration).

    def add_user(
        self, name: str, secret: str, actor: str, desktop: str | None = None
    ) -> list[Change]:
        """Create a hot-desking user, optionally with their own desktop."""
        _check_user_name(name)
        _check_text(actor, "actor")
        with self.store.atomic():
            if self.store.get_user(name) is not None:
                raise BrokerError(f"user {name!r} exists already")
            if desktop is not None:
                self._check_owner_free(desktop, user=name)
            hashed = self._hasher.hash(secret)
            self.store.add_user(User(name, desktop, self._clock()), hashed)
            self._audit(actor, "user-add", name, f"desktop {desktop}" if desktop else "")
        return self._settle()

    def set_user_secret(self, name: str, secret: str, actor: str) -> None:
        _check_text(actor, "actor")
        hashed = self._hasher.hash(secret)
        with self.store.atomic():
            self._user(name)
            self.store.set_user_secret_hash(name, hashed)
            self._audit(actor, "user-secret", name)

    def set_user_desktop(self, name: str, desktop: str | None, actor: str) -> list[Change]:
        """Give ``name`` their own desktop (None: none; they borrow from user_pool)."""
        _check_text(actor, "actor")
        with self.store.atomic():
            self._user(name)
            if desktop is not None:
                self._check_owner_free(desktop, user=name)
            self.store.set_user_desktop(name, desktop)
            self._audit(actor, "user-desktop", name, f"desktop {desktop}")
        return self._settle()

    def delete_user(self, name: str, actor: str) -> list[Change]:
        """Remove a user; if logged in, their terminal falls back."""
        _check_text(actor, "actor")
        with self.store.atomic():
            self._user(name)
            self._log_out(name, actor, f"user {name} deleted")
            self.store.delete_user(name)
            self._audit(actor, "user-delete", name)
        return self._settle()

    def set_user_disabled(self, name: str, disabled: bool, actor: str) -> list[Change]:
        """Disable a user (logged out now, refused at every login) or enable them again."""
        _check_text(actor, "actor")
        with self.store.atomic():
            self._user(name)
            self.store.set_user_disabled(name, disabled)
            self._audit(actor, "user-disable" if disabled else "user-enable", name)
            if disabled:
                terminal = self._log_out(name, actor, f"user {name} disabled")
                if terminal is not None:
                    self._conns[terminal].notice = "This account has been disabled."
        return self._settle()

    def _log_out(self, name: str, actor: str, why: str) -> str | None:
        """End ``name``'s login, if any (audited); the terminal it was at."""
        terminal = self._terminal_of(name)
        if terminal is not None:
            del self._logins[terminal]
            self._audit(actor, "logout", terminal, why)
        if self.site is not None:
            self.store.delete_login(name)  # wherever it is: that node ends it when it hears
        return terminal

    def _disabled(self, user: str) -> bool:
        record = self.store.get_user(user)
        return record is not None and record.disabled

    def _user(self, name: str) -> User:
        user = self.store.get_user(name)
        if user is None:
            raise BrokerError(f"no user {name!r}")
        return user

    # Pairing (administration).

    def pair(self, terminal_id: str, desktop: str, actor: str) -> list[Change]:
        """Pair a terminal (connected or not) with a desktop.

        The terminal's previous pairing and the desktop's previous terminal
        are released.  Pool desktops and users' desktops cannot be paired.
        """
        _check_text(terminal_id, "terminal id")
        _check_text(actor, "actor")
        with self.store.atomic():
            self._check_owner_free(desktop)
            self._pair(terminal_id, desktop, actor, "")
        return self._settle()

    def pair_code(
        self,
        code: str,
        desktop: str,
        actor: str,
        terminal_id: str | None = None,
        by_address: bool = False,
    ) -> list[Change]:
        """Pair the terminal showing ``code`` with ``desktop``.

        Codes are single use and expire.  Wrong codes are rate-limited per
        actor and in total; with ``terminal_id`` (the dashboard row the code
        was typed into) wrong tries also count against that terminal's code,
        which is replaced after ``code_tries`` of them.  Raises
        PairingCodeError on any wrong, expired or used code.

        ``by_address`` pairs the address of a keyless terminal showing the
        code (``viewer-ADDR``) rather than that one connection; the live
        connection takes the address's id (see ``take_renames``).
        """
        if not self.config.pairing_codes:
            raise BrokerError("pairing codes are off")
        _check_text(actor, "actor")
        now = self._clock()
        wait = self._code_wait(actor, now)
        if wait > 0:
            self._audit(actor, "pair-code-refused", terminal_id or "", f"rate limited for {wait} s")
            raise PairingCodeError(f"too many wrong codes; try again in {wait} seconds")
        paired: PairingCode | None = None
        target = ""
        with self.store.atomic():
            self._check_owner_free(desktop)
            record = self._valid_code(code, terminal_id, now)
            if record is not None:
                target = (
                    self._address_target(record.terminal_id) if by_address else record.terminal_id
                )
                if self.store.consume_pairing_code(record.code, now):
                    how = " with a pairing code" + (", by address" if by_address else "")
                    self._pair(target, desktop, actor, how)
                    paired = record
        if paired is not None:
            if target != paired.terminal_id:
                self._rename(paired.terminal_id, target, now)
            return self._settle()
        raise PairingCodeError(
            "no such pairing code, or it expired or was used",
            self._code_failed(code, terminal_id, actor, now),
        )

    def _address_target(self, terminal_id: str) -> str:
        """The id ``terminal_id`` is paired as by address: its ``viewer-ADDR``,
        which no other live connection may hold."""
        target = by_address_id(terminal_id)
        if target is None:
            raise BrokerError(
                f"terminal {terminal_id!r} is not a keyless viewer: pair it without --by-address"
            )
        if target != terminal_id and target in self._conns:
            raise BrokerError(
                f"another connection from that address is {target!r} already; "
                "pair this one without --by-address"
            )
        return target

    def _rename(self, old: str, new: str, now: float) -> None:
        """The live connection ``old`` becomes terminal ``new`` (bound by address)."""
        record = self.store.get_terminal(old)
        conn = self._conns.pop(old, None)
        self._end_session(old, now)
        self._shown.pop(old, None)
        self._code_expiry.pop(old, None)
        if conn is not None:
            self._conns[new] = conn
            self._renames.append((old, new))
        for desktop, holder in list(self._leases.items()):
            if holder == ("terminal", old):
                self._leases[desktop] = ("terminal", new)
        for table in (self._logins, self._watch):
            if old in table:
                table[new] = table.pop(old)
        user = self._logins.get(new)
        if user is not None and self.site is not None:
            self.store.set_login(Login(user, new, self.site.node, now))
        if record is not None:
            self.store.upsert_terminal(replace(record, id=new, last_seen=now))
        self.forget_terminal(old, f"now {new}")

    def unpair(self, terminal_id: str, actor: str) -> list[Change]:
        """Remove a terminal's pairing; if connected it falls back."""
        _check_text(actor, "actor")
        with self.store.atomic():
            old = self.store.unpair(terminal_id)
            if old is None:
                return self._take([])
            self._audit(actor, "unpair", terminal_id, f"desktop {old.desktop}")
        self._stop_waiting(terminal_id)
        return self._settle()

    def _pair(self, terminal_id: str, desktop: str, actor: str, how: str) -> None:
        old = self.store.pairing_for(terminal_id)
        moved = self.store.pairing_for_desktop(desktop)
        if moved is not None and moved.terminal_id != terminal_id:
            self._audit(actor, "unpair", moved.terminal_id, f"desktop {desktop} moved")
            self._stop_waiting(moved.terminal_id)
        self._stop_waiting(terminal_id)
        self.store.pair(Pairing(terminal_id, desktop, self._clock(), actor))
        code = self.store.pairing_code_for(terminal_id)
        if code is not None:
            self.store.delete_pairing_code(code.code)
        replaced = f" (was {old.desktop})" if old and old.desktop != desktop else ""
        self._audit(actor, "pair", terminal_id, f"desktop {desktop}{how}{replaced}")

    def _code_wait(self, actor: str, now: float) -> int:
        wait = max(
            self._codes_by_actor.retry_after(actor, now),
            self._codes_total.retry_after("", now),
        )
        return math.ceil(wait)

    def _valid_code(self, text: str, terminal_id: str | None, now: float) -> PairingCode | None:
        code = codes.normalise_code(text, self.config.code_length)
        record = self.store.get_pairing_code(code) if code else None
        if record is None or record.expires <= now or record.failures >= self.config.code_tries:
            return None
        if terminal_id is not None and record.terminal_id != terminal_id:
            return None
        return record

    def _code_failed(
        self, text: str, terminal_id: str | None, actor: str, now: float
    ) -> list[Change]:
        self._codes_by_actor.failed(actor, now)
        self._codes_total.failed("", now)
        shown = codes.normalise_code(text, self.config.code_length) or "(malformed)"
        target = terminal_id or ""
        self._audit(actor, "pair-code-failed", target, f"code {shown}")
        refresh: tuple[str, ...] = ()
        aimed = self.store.pairing_code_for(terminal_id) if terminal_id else None
        if (
            aimed is not None
            and terminal_id is not None
            and self.store.record_code_failure(aimed.code) >= self.config.code_tries
        ):
            self.store.delete_pairing_code(aimed.code)
            self._audit(actor, "pair-code-locked", terminal_id, "a new code is shown")
            refresh = (terminal_id,)
        return self._settle(refresh=refresh)

    # Control and watching.

    def kick(self, terminal_id: str, actor: str) -> list[Change]:
        """Disconnect a terminal: it shows KICKED, then the relay closes it.

        Its login ends and its pool lease is freed; a pairing stays (unpair
        for that).  A terminal that is not connected gives no changes.
        """
        _check_text(actor, "actor")
        if terminal_id not in self._conns:
            return self._take([])
        user = self._logins.get(terminal_id)
        shown = self._shown.get(terminal_id)
        what = f"desktop {shown.desktop}" if isinstance(shown, ShowDesktop) else "no desktop"
        self._audit(actor, "kick", terminal_id, what + (f", user {user}" if user else ""))
        self._drop(terminal_id, f"kicked by {actor}")
        kicked = ShowScreen(ScreenKind.KICKED, "Disconnected by the administrator.")
        return [Change(terminal_id, kicked), *self._settle()]

    def shadow(self, terminal_id: str, desktop: str, actor: str) -> list[Change]:
        """Let a connected terminal (e.g. the dashboard's viewer) watch a desktop
        view-only.  Anyone logged in there is logged out."""
        self._connected(terminal_id)
        _check_text(actor, "actor")
        if desktop not in self._states:
            raise BrokerError(f"desktop {desktop!r} is not registered")
        user = self._pop_login(terminal_id)
        if user is not None:
            self._audit(actor, "logout", terminal_id, f"user {user}, for shadowing")
        self._stop_waiting(terminal_id)
        self._watch[terminal_id] = desktop
        self._audit(actor, "shadow", terminal_id, f"desktop {desktop} view-only")
        return self._settle()

    def unshadow(self, terminal_id: str, actor: str) -> list[Change]:
        _check_text(actor, "actor")
        desktop = self._watch.pop(terminal_id, None)
        if desktop is None:
            return self._take([])
        self._audit(actor, "unshadow", terminal_id, f"desktop {desktop}")
        return self._settle()

    def viewer_connected(
        self, viewer_id: str, desktop: str, control: bool, actor: str, connection: Hashable
    ) -> list[Change]:
        """An admin's viewer (the dashboard's) connected to ``desktop``.

        View-only, it watches like a shadowing terminal.  With ``control`` it
        takes the desktop over: the viewer gets control and the terminal that
        had it keeps showing the desktop, view-only, until the viewer leaves.
        Nothing is stored about the viewer beyond the audit log and its
        session record.  Returns every change, the viewer's own included.
        """
        _check_text(viewer_id, "viewer id")
        _check_text(actor, "actor")
        if viewer_id in self._conns:
            raise AlreadyConnectedError(f"viewer {viewer_id!r} is already connected")
        if desktop not in self._states:
            raise BrokerError(f"desktop {desktop!r} is not registered")
        if control and desktop in self._taken:
            raise BrokerError(
                f"desktop {desktop!r} is already taken over by {self._taken[desktop]}"
            )
        self._conns[viewer_id] = _Connection(connection)
        if control:
            self._taken[desktop] = viewer_id
            held = self._controller.get(desktop)
            detail = f"terminal {held} is view-only meanwhile" if held else "no terminal held it"
            self._audit(actor, "take-over", desktop, f"viewer {viewer_id}; {detail}")
        else:
            self._watch[viewer_id] = desktop
            self._audit(actor, "shadow", desktop, f"viewer {viewer_id}, view-only")
        return self._settle()

    # Who owns what.

    def _check_owner_free(self, desktop: str, user: str | None = None) -> None:
        """Refuse to give ``desktop`` a second owner: a pool, a user other than
        ``user``, or (when giving it to a user) a pairing.  A paired desktop
        may be paired again: the pairing moves."""
        if self.store.get_desktop(desktop) is None:
            raise BrokerError(f"desktop {desktop!r} is not registered")
        pool = self.config.pool_of(desktop)
        if pool is not None:
            raise BrokerError(f"desktop {desktop!r} belongs to pool {pool!r}")
        owners = [u.name for u in self.store.users_with_desktop(desktop) if u.name != user]
        if owners:
            raise BrokerError(f"desktop {desktop!r} belongs to user {owners[0]!r}")
        paired = self.store.pairing_for_desktop(desktop)
        if user is not None and paired is not None:
            raise BrokerError(f"desktop {desktop!r} is paired with {paired.terminal_id!r}")

    def _own_desktop(self, user: str) -> str | None:
        record = self.store.get_user(user)
        if record is None or record.desktop is None:
            return None
        return None if self.config.pool_of(record.desktop) else record.desktop

    def _terminal_of(self, user: str) -> str | None:
        return next((t for t, u in self._logins.items() if u == user), None)

    def _connected(self, terminal_id: str) -> _Connection:
        conn = self._conns.get(terminal_id)
        if conn is None:
            raise NotConnectedError(f"terminal {terminal_id!r} is not connected")
        return conn

    def _drop(self, terminal_id: str, why: str) -> None:
        del self._conns[terminal_id]
        self._watch.pop(terminal_id, None)
        for desktop in [d for d, viewer in self._taken.items() if viewer == terminal_id]:
            del self._taken[desktop]
            self._audit(SYSTEM, "take-over-end", desktop, f"viewer {terminal_id}: {why}")
        user = self._pop_login(terminal_id)
        if user is not None:
            self._audit(f"user:{user}", "logout", terminal_id, why)

    # Recomputing what everyone shows.

    def _settle(self, refresh: Collection[str] | None = None) -> list[Change]:
        """Recompute every connected terminal's assignment; return what changed.

        ``refresh`` names the terminals whose pairing code may be replaced
        (None: all); the others keep the code already on their screen.
        """
        now = self._clock()
        pairings = {p.terminal_id: p for p in self.store.list_pairings()}
        self._reconcile_leases(pairings)
        wanted: dict[str, Assignment] = {}
        claims: dict[str, list[str]] = {}
        self._codes, self._settling = None, True
        try:
            for terminal_id in self._conns:
                assignment, claim = self._decide(terminal_id, pairings, now, refresh)
                wanted[terminal_id] = assignment
                if claim is not None:
                    claims.setdefault(claim, []).append(terminal_id)
        finally:
            self._codes, self._settling = None, False
        self._resolve_conflicts(claims, wanted)
        if self.site is None:
            return self._take(self._publish(wanted, now))
        self._claim_control(self.site, wanted)
        changes = self._publish(wanted, now)
        self._release_control(self.site)  # only once no terminal here shows them in control
        return self._take(changes)

    def _decide(
        self,
        terminal_id: str,
        pairings: dict[str, Pairing],
        now: float,
        refresh: Collection[str] | None,
    ) -> tuple[Assignment, str | None]:
        """What ``terminal_id`` should show, and which desktop it claims control of.

        A desktop an admin's viewer took over is shown to the terminal that
        would control it, view-only; only the viewer claims it.
        """
        assignment, claim = self._wanted(terminal_id, pairings, now, refresh)
        if claim is None:
            return assignment, None
        taker = self._taken.get(claim)
        if taker is not None and taker != terminal_id:
            return self._view(claim, control=False), None
        return assignment, claim

    def _wanted(
        self,
        terminal_id: str,
        pairings: dict[str, Pairing],
        now: float,
        refresh: Collection[str] | None,
    ) -> tuple[Assignment, str | None]:
        """What ``terminal_id`` asks for, before any take-over."""
        taken = next((d for d, viewer in self._taken.items() if viewer == terminal_id), None)
        if taken is not None:
            return self._view(taken, control=True), taken
        watched = self._watch.get(terminal_id)
        if watched is not None:
            return self._view(watched, control=False), None
        user = self._logins.get(terminal_id)
        if user is not None:
            desktop = self._own_desktop(user) or self._lease_of(("user", user))
            if desktop is None:
                message = f"Waiting for a free desktop for {user}."
                return ShowScreen(ScreenKind.NO_DESKTOP_FREE, message), None
            return self._view(desktop, control=True), desktop
        pairing = pairings.get(terminal_id)
        if self._holds(pairing):
            assert pairing is not None
            return self._view(pairing.desktop, control=True), pairing.desktop
        leased = self._lease_of(("terminal", terminal_id))
        if leased is not None:
            return self._view(leased, control=True), leased
        notice = ""
        if pairing is not None and pairing.desktop not in self._states:
            notice = f"Its desktop {pairing.desktop} is no longer configured."
        return self._fallback(terminal_id, now, refresh, notice), None

    def _holds(self, pairing: Pairing | None) -> bool:
        """Whether ``pairing`` gives its terminal a desktop: one configured, in no pool."""
        return (
            pairing is not None
            and pairing.desktop in self._states
            and self.config.pool_of(pairing.desktop) is None
        )

    def _view(self, desktop: str, control: bool) -> Assignment:
        state = self._states.get(desktop)
        if state is not None and state.offered:
            return _grant(desktop, control)
        if state is DesktopState.STARTING:
            progress = self._progress.get(desktop)
            message = "Starting the desktop."
            return ShowScreen(ScreenKind.STARTING, message, desktop=desktop, progress=progress)
        failure = self._failures.get(desktop)
        if failure:
            return ShowScreen(ScreenKind.FAILED, failure, desktop=desktop)
        message = "The desktop is not available. Please wait or ask the administrator."
        return ShowScreen(ScreenKind.UNAVAILABLE, message, desktop=desktop)

    def _fallback(
        self, terminal_id: str, now: float, refresh: Collection[str] | None, notice: str = ""
    ) -> ShowScreen:
        notice = self._conns[terminal_id].notice or notice
        code = None
        if self.config.pairing_codes:
            code = self._code_for(terminal_id, now, refresh is None or terminal_id in refresh)
        kind = {
            "pairing": ScreenKind.PAIRING,
            "login": ScreenKind.LOGIN,
            "pool": ScreenKind.NO_DESKTOP_FREE,
        }[self.config.unknown_terminal]
        failed = None
        if kind is ScreenKind.NO_DESKTOP_FREE and not notice:
            failed = self._pool_failure(self.config.default_pool)
            notice = "All desktops are in use. This terminal will get the next free one."
        shown_id = terminal_id if code is not None else None
        if failed is not None:
            return ShowScreen(kind, self._failures[failed], code, shown_id, desktop=failed)
        return ShowScreen(kind, notice, code, shown_id)

    def _pool_failure(self, pool: str | None) -> str | None:
        """The first desktop of ``pool`` that could not start, when none of them is
        usable: waiting for "the next free one" would be waiting for nothing."""
        members = self.config.pools.get(pool, ()) if pool is not None else ()
        if any(_usable(self._states.get(d)) for d in members):
            return None
        return next((d for d in members if d in self._failures), None)

    def _code_for(self, terminal_id: str, now: float, refresh: bool) -> str:
        """The formatted pairing code ``terminal_id`` shows, made if needed."""
        shown = self._shown.get(terminal_id)
        if not refresh and isinstance(shown, ShowScreen) and shown.code is not None:
            return shown.code
        record = self._stored_code(terminal_id)
        valid = (
            record is not None and record.expires > now and record.failures < self.config.code_tries
        )
        if not valid or record is None:
            record = self._new_code(terminal_id, now)
        self._code_expiry[terminal_id] = record.expires
        return codes.format_code(record.code)

    def _stored_code(self, terminal_id: str) -> PairingCode | None:
        """The stored code of ``terminal_id``.  Within one settle every code is read
        at once, the first time one is needed: one query rather than one for each
        terminal on a pairing or login screen (on PostgreSQL, each a round trip)."""
        if not self._settling:
            return self.store.pairing_code_for(terminal_id)
        if self._codes is None:
            self._codes = {c.terminal_id: c for c in self.store.list_pairing_codes()}
        return self._codes.get(terminal_id)

    def _new_code(self, terminal_id: str, now: float) -> PairingCode:
        for _ in range(16):
            code = codes.new_code(self.config.code_length)
            record = PairingCode(code, terminal_id, now, now + self.config.code_lifetime)
            if self.store.get_pairing_code(code) is not None:
                continue
            try:
                self.store.put_pairing_code(record)
            except ConflictError:
                continue
            if self._codes is not None:
                self._codes[terminal_id] = record
            return record
        raise BrokerError("could not make a unique pairing code")

    def _resolve_conflicts(
        self, claims: dict[str, list[str]], wanted: dict[str, Assignment]
    ) -> None:
        """Leave control of each desktop with one terminal, whatever the store says.

        The terminal already in control keeps it; the others show IN_USE.
        """
        controller: dict[str, str] = {}
        for desktop, claimants in claims.items():
            keeper = self._controller.get(desktop)
            if keeper not in claimants:
                keeper = claimants[0]
            for terminal_id in claimants:
                if terminal_id != keeper:
                    log.warning("desktop %s is claimed by %s and %s", desktop, keeper, terminal_id)
                    wanted[terminal_id] = _in_use(desktop)
            controller[desktop] = keeper
        self._controller = controller

    def _claim_control(self, site: SiteClaims, wanted: dict[str, Assignment]) -> None:
        """Leave control of a desktop with its terminal here only while this node
        holds the desktop's control lease for it; the others show IN_USE."""
        held = site.held()
        for desktop, terminal_id in list(self._controller.items()):
            if held.get(desktop) == terminal_id:
                continue
            if not site.elsewhere(desktop) and site.acquire(desktop, terminal_id):
                continue
            log.info("desktop %s is controlled at another node", desktop)
            del self._controller[desktop]
            wanted[terminal_id] = _in_use(desktop)

    def _release_control(self, site: SiteClaims) -> None:
        """Give up the control leases of desktops no terminal here controls."""
        for desktop in site.held():
            if desktop not in self._controller:
                site.release(desktop)

    def _publish(self, wanted: dict[str, Assignment], now: float) -> list[Change]:
        """Record sessions and what is shown; return the changes, those that
        take control away first.

        All or nothing: when the store cannot record the sessions (a
        StoreError, e.g. its disk is full) nothing is published, so the next
        settle finds the same changes and publishes them then.
        """
        if wanted == self._shown:
            return []
        saved = dict(self._shown), dict(self._sessions), dict(self._code_expiry)
        try:
            with self.store.atomic():
                return self._record(wanted, now)
        except StoreError:
            self._shown, self._sessions, self._code_expiry = saved
            raise

    def _record(self, wanted: dict[str, Assignment], now: float) -> list[Change]:
        for terminal_id in [t for t in self._shown if t not in wanted]:
            self._end_session(terminal_id, now)
            del self._shown[terminal_id]
            self._code_expiry.pop(terminal_id, None)
        changes = []
        for terminal_id, new in wanted.items():
            old = self._shown.get(terminal_id)
            if new == old:
                continue
            self._end_session(terminal_id, now)
            if _controls(new):
                self._start_session(terminal_id, new, now)
            if not (isinstance(new, ShowScreen) and new.code is not None):
                self._code_expiry.pop(terminal_id, None)
            self._shown[terminal_id] = new
            changes.append(Change(terminal_id, new))
        changes.sort(key=lambda change: _controls(change.assignment))
        return changes

    def _start_session(self, terminal_id: str, shown: Assignment, now: float) -> None:
        assert isinstance(shown, ShowDesktop)
        user = self._logins.get(terminal_id)
        self._sessions[terminal_id] = self.store.start_session(
            terminal_id, shown.desktop, user, now
        )

    def _end_session(self, terminal_id: str, now: float) -> None:
        session = self._sessions.pop(terminal_id, None)
        if session is not None:
            self.store.end_session(session, now)

    def _take(self, changes: list[Change]) -> list[Change]:
        """Changes held back from terminal_connected, then ``changes``."""
        pending, self._pending = self._pending, []
        return pending + changes

    # Pool leases.

    def _reconcile_leases(self, pairings: dict[str, Pairing]) -> None:
        """Free leases nobody needs any more; lend free desktops to those waiting."""
        needs = self._lease_needs(pairings)
        controlled = self.site.held() if self.site is not None else {}
        for desktop, holder in list(self._leases.items()):
            pool = self.config.pool_of(desktop)  # None once a reload took it out of its pool
            if (
                pool is None
                or needs.get(holder) != pool
                or not _usable(self._states.get(desktop))
                or self._taken_elsewhere(desktop, controlled)
            ):
                del self._leases[desktop]
        held = set(self._leases.values())
        waiting = [h for h in self._waiting if h in needs and h not in held]
        waiting += [h for h in needs if h not in held and h not in waiting]
        self._waiting = []
        for holder in waiting:
            free = self._free_desktop(needs[holder], holder)
            if free is None:
                self._waiting.append(holder)
            else:
                self._leases[free] = holder

    def _lease_needs(self, pairings: dict[str, Pairing]) -> dict[Holder, str]:
        """Who needs a pool desktop, from which pool, in the order they asked."""
        needs: dict[Holder, str] = {}
        default_pool = self.config.default_pool
        user_pool = self.config.user_pool
        for terminal_id in self._conns:
            user = self._logins.get(terminal_id)
            if terminal_id in self._watch or terminal_id in self._taken.values():
                continue
            if user is not None:
                if user_pool is not None and self._own_desktop(user) is None:
                    needs[("user", user)] = user_pool
                continue
            if self._holds(pairings.get(terminal_id)):
                continue
            if self.config.unknown_terminal == "pool" and default_pool is not None:
                needs[("terminal", terminal_id)] = default_pool
        return needs

    def _free_desktop(self, pool: str, holder: Holder) -> str | None:
        for desktop in self.config.pools[pool]:
            if (
                _usable(self._states.get(desktop))
                and desktop not in self._leases
                and self._may_lend(desktop, holder)
            ):
                return desktop
        return None

    def _may_lend(self, desktop: str, holder: Holder) -> bool:
        """Whether ``desktop`` may be lent to ``holder``: always on one node; with
        site claims, once this node holds its control lease for the holder's
        terminal (a lend that loses the race tries the next desktop)."""
        if self.site is None:
            return True
        kind, name = holder
        terminal_id = name if kind == "terminal" else self._terminal_of(name)
        if terminal_id is None:
            return False
        if self.site.held().get(desktop) == terminal_id:
            return True
        return not self.site.elsewhere(desktop) and self.site.acquire(desktop, terminal_id)

    def _taken_elsewhere(self, desktop: str, held: Mapping[str, str]) -> bool:
        """A lent pool desktop whose control lease another node holds now (this
        node's was not renewed in time): its holder gets another one."""
        site = self.site
        return site is not None and desktop not in held and site.elsewhere(desktop)

    def _lease_of(self, holder: Holder) -> str | None:
        return next((d for d, h in self._leases.items() if h == holder), None)

    # Audit and limits.

    def record(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        """Audit what happened outside the broker (e.g. a wrong VNC password)."""
        self._audit(actor, action, subject, _printable(detail, 300))

    def _audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        append_audit(self.store, self._clock(), actor, action, subject, detail)

    def _limiters(self) -> tuple[FailureLimiter, ...]:
        return (
            self._login_by_terminal,
            self._login_by_user,
            self._login_by_source,
            self._codes_by_actor,
            self._codes_total,
        )


def by_address_id(terminal_id: str) -> str | None:
    """``viewer-ADDR`` for a keyless viewer's id (``viewer-ADDR`` or
    ``viewer-ADDR~XXXXXX``); None for any other id."""
    address = address_of(terminal_id)
    return None if address is None else ADDRESS_PREFIX + address


def viewer_terminal_id(host: str) -> str:
    """The id thinserve gives a plain VNC viewer that connects from ``host``.

    Only the address counts (not the port), so a viewer keeps its id, and
    its pairing, across reconnections; IPv4-mapped IPv6 addresses map to
    their IPv4 form.  A viewer gets this id only where the administrator
    bound its address (thinserve/identities.py).
    """
    text = host.strip().strip("[]")
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return ADDRESS_PREFIX + _printable(text.lower(), MAX_ID - 7)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return ADDRESS_PREFIX + address.compressed


def _in_use(desktop: str) -> ShowScreen:
    return ShowScreen(ScreenKind.IN_USE, IN_USE_NOTICE, desktop=desktop)


def _controls(assignment: Assignment | None) -> bool:
    return isinstance(assignment, ShowDesktop) and assignment.control


def _user_key(user: str) -> str:
    return user if _USER_NAME.fullmatch(user) else "(invalid user name)"


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ID or _CONTROL_CHARS.search(text):
        raise BrokerError(f"{what} must be 1 to {MAX_ID} printable characters")


def _check_user_name(name: str) -> None:
    if not _USER_NAME.fullmatch(name):
        raise BrokerError(
            "a user name is 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )


def append_audit(
    store: Store, now: float, actor: str, action: str, subject: str, detail: str = ""
) -> None:
    """One audit entry, its actor and subject made printable and bounded;
    counted for the metrics.  The broker's, and the admin accounts' too."""
    store.append_audit(now, _printable(actor, 160), action, _printable(subject, 160), detail)
    metrics.audited(action)


def _printable(text: str, limit: int) -> str:
    """``text`` made safe for a log line: no control characters, bounded."""
    text = _CONTROL_CHARS.sub("?", str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _terminal(terminal_id: str, info: TerminalInfo, now: float) -> Terminal:
    return Terminal(
        id=terminal_id,
        name=_printable(info.name, 128),
        model=_printable(info.model, 128),
        address=_printable(info.address, 128),
        screen_width=min(max(int(info.screen_width), 0), 65535),
        screen_height=min(max(int(info.screen_height), 0), 65535),
        last_seen=now,
    )


def _forgotten(paired: list[str], owners: list[str]) -> str:
    """The audit detail of a forgotten desktop: the pairings and owners it had."""
    parts = [f"paired with {', '.join(paired)}"] if paired else []
    parts += [f"owned by {', '.join(owners)}"] if owners else []
    return _printable("; ".join(parts) or "unused", 300)


def _describe(info: TerminalInfo) -> str:
    parts = [f"{k} {v}" for k, v in (("model", info.model), ("address", info.address)) if v]
    return _printable(", ".join(parts), 300)


def _usable(state: DesktopState | None) -> bool:
    """Offered, or on its way: a terminal may wait for it (not held back or crashed)."""
    return state is not None and (state.offered or state is DesktopState.STARTING)
