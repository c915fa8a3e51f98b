"""Joins terminal sessions to the broker's decisions.

Every terminal session asks the hub what to show when it attaches; the hub
tells the broker the terminal connected and turns the broker's Assignment
into a source: a desktop's mirror (only for a ShowDesktop, which only the
broker can make) or a screen thinserve draws (pairing code, login form,
starting, unavailable, in use, kicked).  Later changes from the broker
(pairings, logins elsewhere, kicks) are applied to the live sessions.

A login typed at a terminal's form is checked in three steps: the broker
prepares it on the reactor thread, a Verifier checks the secret with Argon2
in a worker thread (the terminal's form says "Checking…" meanwhile), and the
broker applies the verdict back on the reactor thread.  No terminal freezes
while a secret is checked.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from . import logs, metrics
from .broker import (
    SYSTEM,
    Assignment,
    Broker,
    BrokerError,
    Change,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
    TerminalInfo,
)
from .broker.core import AlreadyConnectedError, LoginCheck, LoginVerdict
from .clock import Clock
from .desktop_state import DesktopState
from .identities import IdentityRules
from .relay import encodepool, screens
from .relay.drawn import DrawnScreen
from .relay.login import LoginScreen
from .relay.session import TerminalSession
from .relay.source import Source
from .relay.upstream import DEFAULT_SIZE, Mirror
from .store.base import StoreError, StoreFault
from .terminal_ids import ONE_CONNECTION, kind_of, lasts_one_connection
from .verifier import Verifier

log = logging.getLogger(__name__)

TICK_SECONDS = 5.0
STORE_FAULT_REPORT_EVERY = 60.0  # seconds between log lines about one kind of store fault
KICK_GRACE = 3.0  # seconds the "disconnected" screen shows before the connection closes
VIEWER_PREFIX = "dashboard-"  # an admin's viewer: dashboard-ADMIN~N, for one connection


@dataclasses.dataclass(frozen=True)
class Terminal:
    """A connected terminal, filed under its id: its session, which knows the
    id and what the terminal said about itself."""

    session: TerminalSession

    @property
    def info(self) -> TerminalInfo:
        return self.session.info


class Hub:
    def __init__(
        self,
        broker: Broker,
        mirrors: dict[str, Mirror],
        # IReactorTime and IReactorFromThreads: zope interfaces (see thinserve.clock)
        reactor: Any = None,
        on_desktop_wanted: Callable[[str], None] | None = None,
        verifier: Verifier | None = None,
        address_subnets: tuple[str, ...] = (),
        max_unpaired: int = 200,
    ) -> None:
        self.broker = broker
        self.mirrors = mirrors
        # Desktops another node runs, shown over a node link (cluster/remote.py).
        self.remote_mirrors: dict[str, Mirror] = {}
        self.desktop_details: dict[str, str] = {}  # desktop -> the manager's last word on it
        reactor = reactor or default_reactor
        self.reactor: Clock = reactor
        self.verifier = verifier or Verifier(reactor)
        # Large updates are prepared in worker threads on the real reactor;
        # with a test's clock everything stays on one thread, in turns.
        self.workers = encodepool.shared() if reactor is default_reactor else None
        self.terminals: dict[str, Terminal] = {}
        self.on_desktop_wanted = on_desktop_wanted or (lambda name: None)
        # Tells every node of the site (kind, subject); None: this is the only node.
        self.announce: Callable[[str, str], object] | None = None
        # Hears each change of a desktop's state (not its progress), e.g. to tell the site.
        self.on_state_change: Callable[[str, DesktopState], None] = lambda name, state: None
        self._states: dict[str, DesktopState] = {}
        self.identities = IdentityRules(
            address_subnets,
            address_bound=lambda t: broker.store.pairing_for(t) is not None,
            taken=broker.is_connected,
        )
        self.max_unpaired = max_unpaired
        self._ticker = task.LoopingCall(self.tick)
        self._ticker.clock = reactor
        self._store_faults: dict[str, tuple[float, int]] = {}  # kind -> (quiet until, held)
        self.stopped = False
        # Called after anything a dashboard shows may have changed: what a
        # terminal shows, who is connected, a desktop's state.  Cheap callbacks
        # only (they note the change and return); a failing one is logged.
        self.on_change: list[Callable[[], None]] = []
        self._viewer_numbers = itertools.count(1)

    def start(self) -> None:
        self._ticker.start(TICK_SECONDS, now=False)

    def stop(self) -> None:
        """Stop deciding; close every terminal (the store may close next)."""
        self.stopped = True
        if self._ticker.running:
            self._ticker.stop()
        self.verifier.stop()
        for terminal in list(self.terminals.values()):
            terminal.session.close("thinserve is stopping")

    def tick(self) -> None:
        self.apply(self.broker.lapsed_control())  # even when the store cannot be reached
        try:
            changes = self.broker.tick()
        except StoreError as exc:  # the ticker carries on; the next tick tries again
            self._store_fault("cannot tidy up the store", exc)
            return
        self.apply(changes)

    # -- sessions --------------------------------------------------------------------
    def new_session(
        self, info: TerminalInfo | None = None, advertised_key: str | None = None
    ) -> TerminalSession:
        """A session for one connection; ``info`` and ``advertised_key`` come
        from a discovered terminal's advert: recorded, never trusted."""
        return TerminalSession(
            self._attach,
            self._detach,
            info=info,
            advertised_key=advertised_key,
            workers=self.workers,
        )

    def _attach(self, session: TerminalSession) -> Source:
        proto = session.proto
        assert proto is not None
        host = proto.peer_host()
        found = self.identities.identify(host, proto.proven_key, session.advertised_key)
        terminal_id = found.terminal_id
        session.terminal_id = terminal_id
        if not session.info.address:
            session.info = dataclasses.replace(session.info, address=host)
        info = session.info
        note = found.note or (self._changed_key(terminal_id, info) if found.kind == "key" else "")
        if note:
            log.warning("terminal %s from %s: %s", terminal_id, host, note)
        if found.kind == "key":
            self._replace_old_connection(terminal_id)
        if self._too_many_waiting(terminal_id, proto.login_user):
            return self._turn_away(session, terminal_id, host)
        self.terminals[terminal_id] = Terminal(session)
        try:
            assignment = self.broker.terminal_connected(
                terminal_id, info, connection=id(session), notice=note
            )
        except StoreError as exc:
            return self._cannot_accept(session, terminal_id, host, exc)
        if proto.login_user is not None:
            assignment = self._log_in(terminal_id, proto.login_user)
        log.info(
            "terminal %s (%s) connected from %s: %s",
            terminal_id,
            _identity_words(found.kind, proto.login_user),
            host,
            _describe(assignment),
            extra=logs.fields(terminal=terminal_id, user=proto.login_user, event="connected"),
        )
        session.control = _takes_input(assignment)
        source = self._source_for(terminal_id, assignment, session)
        self.changed()
        return source

    def viewer_session(
        self, actor: str, admin: str, desktop: str, control: bool
    ) -> TerminalSession:
        """A session for an admin's viewer in the dashboard: it watches ``desktop``
        view-only or, with ``control``, takes it over (Broker.viewer_connected)."""
        viewer_id = f"{VIEWER_PREFIX}{admin}{ONE_CONNECTION}{next(self._viewer_numbers)}"

        def attach(session: TerminalSession) -> Source:
            session.terminal_id = viewer_id
            self.terminals[viewer_id] = Terminal(session)
            try:
                changes = self.broker.viewer_connected(
                    viewer_id, desktop, control, actor, id(session)
                )
            except (BrokerError, StoreError) as exc:
                return self._refuse(session, viewer_id, screens.kicked(str(exc)))
            log.info("%s opened a viewer on %s (%s)", actor, desktop, _describe_viewer(control))
            self.apply([c for c in changes if c.terminal_id != viewer_id])
            assignment = self.broker.assignment(viewer_id)
            session.control = _takes_input(assignment)
            self.changed()
            return self._source_for(viewer_id, assignment, session)

        info = TerminalInfo(name=f"dashboard viewer of {admin}")
        return TerminalSession(attach, self._detach, info=info, workers=self.workers)

    def _too_many_waiting(self, terminal_id: str, user: str | None) -> bool:
        """Whether a terminal with no pairing (and no login) arrives while
        ``max_unpaired`` terminals already wait without a desktop."""
        if user is not None or self.broker.store.pairing_for(terminal_id) is not None:
            return False
        return self.broker.waiting_count() >= self.max_unpaired

    def _turn_away(self, session: TerminalSession, terminal_id: str, host: str) -> Source:
        log.warning(
            "refused terminal %s from %s: %d terminals already wait to be paired (max_unpaired)",
            terminal_id,
            host,
            self.max_unpaired,
        )
        return self._refuse(session, terminal_id, screens.server_busy())

    def _cannot_accept(
        self, session: TerminalSession, terminal_id: str, host: str, fault: StoreError
    ) -> Source:
        """The store cannot save a new terminal (its disk is full, say): the terminal
        is told so, and the log says why."""
        self._store_fault(f"cannot accept terminals (refused {terminal_id} from {host})", fault)
        reason = fault.reason if isinstance(fault, StoreFault) else StoreFault.reason
        return self._refuse(session, terminal_id, screens.cannot_accept(reason))

    def _refuse(
        self, session: TerminalSession, terminal_id: str, text: screens.ScreenText
    ) -> Source:
        """A short refusal that costs nothing: a shared drawn screen, then close.
        The connection never becomes a terminal of the broker's."""
        width, height = self._screen_size(terminal_id, session)
        self._forget(terminal_id, session)
        session.terminal_id = None
        self._close_later(session, f"turned away: {text.title}")
        return DrawnScreen(text, width, height)

    def _store_fault(self, doing: str, fault: StoreError) -> None:
        """Log a store fault as one ERROR line per kind a minute, however many
        connections meet it; the next line counts those held back."""
        kind = type(fault).__name__
        now = self.reactor.seconds()
        quiet_until, held = self._store_faults.get(kind, (0.0, 0))
        if now < quiet_until:
            self._store_faults[kind] = (quiet_until, held + 1)
            return
        self._store_faults[kind] = (now + STORE_FAULT_REPORT_EVERY, 0)
        more = f" ({held} more since the last report)" if held else ""
        log.error("%s: %s%s", doing, fault, more)

    def _changed_key(self, terminal_id: str, info: TerminalInfo) -> str:
        """Why a new key terminal named like a paired one shows a pairing screen."""
        store = self.broker.store
        if not info.name or store.get_terminal(terminal_id) is not None:
            return ""
        for paired in store.list_pairings():
            known = store.get_terminal(paired.terminal_id)
            if known is not None and known.name == info.name and kind_of(known.id) == "key":
                return (
                    f"This terminal has a new key; {known.id} with the old key is paired with "
                    f"{paired.desktop}. Ask the administrator to pair it again."
                )
        return ""

    def _log_in(self, terminal_id: str, user: str) -> Assignment:
        """A user whose password the handshake checked: their desktop, here."""
        changes = self.broker.login_verified(terminal_id, user)
        self.apply([c for c in changes if c.terminal_id != terminal_id])
        return self.broker.assignment(terminal_id)

    def check_credentials(self, host: str, user: str, secret: str) -> Deferred[str | None]:
        """Check a user name and password given in the RFB handshake (VeNCrypt
        Plain inside TLS): None when right, else the refusal to send."""
        prepared = self.broker.prepare_credentials(host, user, secret)
        if not isinstance(prepared, LoginCheck):
            return succeed(prepared)
        checked = self.verifier.run(prepared.run)
        return checked.addCallbacks(
            self.broker.credentials_checked, self._credentials_lost, errbackArgs=(prepared,)
        )

    def _credentials_lost(self, failure: Failure, check: LoginCheck) -> str:
        """A check that gave no verdict (its thread failed, or stopping): not a
        failure of the user's; it is forgotten, so later logins are checked."""
        if not self.stopped:
            log.error("checking a login %s failed: %s", check.terminal_id, failure.value)
            self.apply(self.broker.abandon_login(check, f"the check failed: {failure.value}"))
        return "The login could not be checked; try again."

    def _replace_old_connection(self, terminal_id: str) -> None:
        """A terminal that proved its key again: its older connection is over."""
        old = self.terminals.pop(terminal_id, None)
        if old is None:
            return
        log.info("terminal %s connected again; closing its old connection", terminal_id)
        self.apply(self.broker.terminal_disconnected(terminal_id, id(old.session)))
        old.session.close("the same terminal connected again")

    def _forget(self, terminal_id: str, session: TerminalSession) -> None:
        """Unfile ``session``, unless a newer connection holds ``terminal_id``."""
        current = self.terminals.get(terminal_id)
        if current is not None and current.session is session:
            del self.terminals[terminal_id]

    def _detach(self, session: TerminalSession) -> None:
        terminal_id = session.terminal_id
        if self.stopped or terminal_id is None:
            return
        self._forget(terminal_id, session)
        try:
            changes = self.broker.terminal_disconnected(terminal_id, id(session))
        except AlreadyConnectedError:
            changes = []
        except StoreError as exc:  # the next tick publishes what changed
            self._store_fault(f"terminal {terminal_id} disconnected", exc)
            changes = []
        if lasts_one_connection(terminal_id):
            try:
                self.broker.forget_terminal(terminal_id, "its connection ended")
            except StoreError as exc:  # forgotten later, with the unpaired ones
                self._store_fault(f"cannot forget terminal {terminal_id}", exc)
        log.info(
            "terminal %s disconnected: %s",
            terminal_id,
            session.ended or "closed",
            extra=logs.fields(terminal=terminal_id, event="disconnected"),
        )
        self.apply(changes)
        self.changed()

    # -- applying decisions -----------------------------------------------------------
    def changed(self) -> None:
        """Tell the ``on_change`` callbacks that something a dashboard shows changed."""
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:
                log.exception("a change callback failed")

    def refresh(self) -> None:
        """The shared store changed elsewhere: show each terminal what it now decides."""
        try:
            changes = self.broker.refresh()
        except StoreError as exc:
            self._store_fault("cannot read what another node changed", exc)
            return
        self.apply(changes)

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            terminal = self.terminals.get(change.terminal_id)
            if terminal is None or not terminal.session.connected:
                continue
            session = terminal.session
            source = self._source_for(change.terminal_id, change.assignment, session)
            session.show(source, control=_takes_input(change.assignment))
            log.info(
                "terminal %s now shows %s",
                change.terminal_id,
                _describe(change.assignment),
                extra=logs.fields(terminal=change.terminal_id, event="shows"),
            )
        if changes:
            self.changed()

    def _source_for(
        self, terminal_id: str, assignment: Assignment, session: TerminalSession
    ) -> Source:
        if isinstance(assignment, ShowDesktop):
            name = assignment.desktop
            mirror = self.mirrors[name] if name in self.mirrors else self.remote_mirrors[name]
            self.on_desktop_wanted(assignment.desktop)
            return mirror
        return self._screen(terminal_id, assignment, session)

    def _screen(self, terminal_id: str, screen: ShowScreen, session: TerminalSession) -> Source:
        width, height = self._screen_size(terminal_id, session)
        if screen.kind is ScreenKind.LOGIN:

            def submit(user: str, secret: str) -> None:
                self._login(terminal_id, form, user, secret)

            form = LoginScreen(width, height, submit, screen.message, terminal_id)
            return form
        if screen.kind is ScreenKind.KICKED:
            self._close_later(session, "kicked by the administrator")
        return DrawnScreen(_screen_text(screen), width, height)

    def _screen_size(self, terminal_id: str, session: TerminalSession) -> tuple[int, int]:
        terminal = self.terminals.get(terminal_id)
        if session.width and session.height:
            return session.width, session.height
        if terminal is not None and terminal.info.screen_width and terminal.info.screen_height:
            return terminal.info.screen_width, terminal.info.screen_height
        return DEFAULT_SIZE

    # -- logins --------------------------------------------------------------------------
    def _login(self, terminal_id: str, form: LoginScreen, user: str, secret: str) -> None:
        """A login submitted at ``form``: prepared here, its secret checked in a thread."""
        if self.stopped:
            return
        try:
            prepared = self.broker.prepare_login(terminal_id, user, secret)
        except BrokerError as exc:
            log.warning(
                "login at terminal %s refused: %s",
                terminal_id,
                exc,
                extra=logs.fields(terminal=terminal_id, user=user, event="login-refused"),
            )
            return
        if not isinstance(prepared, LoginCheck):
            self.apply(prepared)  # refused unchecked: the form says why
            return
        form.checking()
        checked = self.verifier.run(prepared.run)
        checked.addCallbacks(self._login_checked, self._login_lost, errbackArgs=(prepared,))
        checked.addErrback(self._login_error, terminal_id)
        checked.addBoth(lambda _: form.checked())

    def _login_checked(self, verdict: LoginVerdict) -> None:
        if not self.stopped:  # the store may be closed
            self.apply(self.broker.apply_login(verdict))

    def _login_lost(self, failure: Failure, check: LoginCheck) -> None:
        if self.stopped:  # stopping cancels the checks still queued
            return
        log.error("checking a login at terminal %s failed: %s", check.terminal_id, failure.value)
        self.apply(self.broker.abandon_login(check, f"the check failed: {failure.value}"))

    def _login_error(self, failure: Failure, terminal_id: str) -> None:
        log.error("login at terminal %s: %s", terminal_id, failure.getTraceback())

    def _close_later(self, session: TerminalSession, why: str) -> None:
        self.reactor.callLater(KICK_GRACE, session.close, why)

    # -- desktops ------------------------------------------------------------------------
    def desktop_state(
        self,
        name: str,
        state: DesktopState,
        progress: float | None = None,
        detail: str = "",
        failed_start: bool = False,
    ) -> None:
        """The desktop manager's report (DesktopListener): the broker decides what it
        means; the detail is kept for the admin API.  A desktop that could not
        start says why on its terminals' screens."""
        self.desktop_details[name] = detail
        metrics.desktop_state(name, state)
        failure = detail if failed_start else ""
        self.apply(self.broker.desktop_state(name, state, progress, failure))
        if self._states.get(name) is not state:
            self._states[name] = state
            self.on_state_change(name, state)
        self.changed()

    def withdraw_desktop(self, name: str) -> None:
        """A desktop no longer configured: its terminals fall back (a reload)."""
        self.desktop_details.pop(name, None)
        metrics.desktop_removed(name)
        self.apply(self.broker.unregister_desktop(name))

    # -- admin actions (the admin API calls these) ------------------------------------------
    def pair(self, terminal_id: str, desktop: str, actor: str = SYSTEM) -> None:
        changes = self.broker.pair(terminal_id, desktop, actor)
        log.info(
            "terminal %s paired with %s by %s",
            terminal_id,
            desktop,
            actor,
            extra=logs.fields(terminal=terminal_id, desktop=desktop, event="paired"),
        )
        self.apply(changes)

    def pair_code(
        self, code: str, desktop: str, actor: str = SYSTEM, by_address: bool = False
    ) -> None:
        changes = self.broker.pair_code(code, desktop, actor, by_address=by_address)
        for old, new in self.broker.take_renames():
            terminal = self.terminals.pop(old, None)
            if terminal is not None:
                terminal.session.terminal_id = new
                self.terminals[new] = terminal
                log.info(
                    "terminal %s is now %s (paired by address)",
                    old,
                    new,
                    extra=logs.fields(terminal=new, desktop=desktop, event="paired"),
                )
        self.apply(changes)

    def unpair(self, terminal_id: str, actor: str = SYSTEM) -> None:
        self.apply(self.broker.unpair(terminal_id, actor))

    def kick(self, terminal_id: str, actor: str = SYSTEM) -> None:
        self.apply(self.broker.kick(terminal_id, actor))

    def kick_elsewhere(self, terminal_id: str, actor: str) -> bool:
        """Kick ``terminal_id`` at whichever node of the site it is connected to;
        False on a single node.  The node that has it kicks it on the notice."""
        if self.announce is None:
            return False
        self.broker.record(actor, "kick", terminal_id, "asked every node of the site")
        self.announce("kick", terminal_id)
        return True

    def shadow(self, terminal_id: str, desktop: str, actor: str = SYSTEM) -> None:
        self.apply(self.broker.shadow(terminal_id, desktop, actor))

    def unshadow(self, terminal_id: str, actor: str = SYSTEM) -> None:
        self.apply(self.broker.unshadow(terminal_id, actor))


def _screen_text(screen: ShowScreen) -> screens.ScreenText:
    kind = screen.kind
    if kind is ScreenKind.PAIRING:
        return screens.pairing(screen.terminal_id or "", screen.code or "", screen.message)
    if kind is ScreenKind.NO_DESKTOP_FREE:
        if screen.desktop:  # every desktop of the pool failed: say why
            return screens.could_not_start(screen.desktop, screen.message)
        return screens.no_desktop_free()
    if kind is ScreenKind.FAILED:
        return screens.could_not_start(screen.desktop or "the desktop", screen.message)
    if kind is ScreenKind.STARTING:
        return screens.starting(screen.desktop or "", screen.progress)
    if kind is ScreenKind.IN_USE:
        return screens.in_use(screen.desktop or "")
    if kind is ScreenKind.KICKED:
        return screens.kicked(screen.message)
    return screens.unavailable(screen.desktop or "the desktop", 0, screen.message)


def _describe_viewer(control: bool) -> str:
    return "in control; its terminal is view-only" if control else "view-only"


def _takes_input(assignment: Assignment) -> bool:
    """Whether the terminal's keys and pointer reach what it shows: a desktop
    it controls, or the login form (whose keys never reach a desktop)."""
    if isinstance(assignment, ShowDesktop):
        return assignment.control
    return assignment.kind is ScreenKind.LOGIN


def _describe(assignment: Assignment) -> str:
    if isinstance(assignment, ShowDesktop):
        return f"desktop {assignment.desktop} ({'control' if assignment.control else 'view-only'})"
    return f"the {assignment.kind.value} screen"


def _identity_words(kind: str, user: str | None) -> str:
    words = {"key": "proved its key", "address": "known by address"}.get(
        kind, "this connection only"
    )
    return words + (f", user {user} logged in" if user else "")
