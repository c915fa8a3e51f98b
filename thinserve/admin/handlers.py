"""What each admin call does, over the hub and its broker's store.

A handler takes the parsed request (a Call) and returns what the answer's
JSON holds, or raises ApiError; the broker's and the store's own errors
become answers in thinserve.admin.http.  Handlers run on the reactor
thread, like the broker; only PNG encoding of a snapshot runs in a worker
thread, on a copy of the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from twisted.internet import defer, threads

from ..broker import PairingCodeError, by_address_id, normalise_code
from ..desktops import DesktopManager
from ..hub import Hub
from ..relay.session import TerminalSession
from ..store.base import AuditEntry, Store
from ..store.base import Desktop as DesktopRecord
from ..store.base import Terminal as TerminalRecord
from ..terminal_ids import kind_of
from . import fields
from .audit import latest_audit
from .errors import NOT_CONNECTED_HINT, ApiError, not_found
from .principal import ADMIN, HELPDESK, READ, Principal

if TYPE_CHECKING:
    from ..dashboard.viewer import ViewersAPI
    from .accounts_api import AccountsAPI
from .views import Views, encode_png, shows, state_word


@dataclass(frozen=True)
class Call:
    """One request, parsed: who asks, path parameters, query and JSON body."""

    actor: str
    params: tuple[str, ...]
    query: dict[str, str]
    body: dict[str, Any]
    principal: Principal | None = None  # None only in tests that call a handler directly


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # "*" matches one path segment
    handler: str  # a method taking a Call, of AdminAPI or of its attribute ``owner``
    needs: str = READ  # the role it takes: READ, HELPDESK or ADMIN (thinserve.admin.principal)
    owner: str = ""
    summary: str = ""  # one line for the OpenAPI document


CORE_ROUTES = (
    Route("GET", ("state",), "get_state", summary="What the broker decided, and the server"),
    Route("GET", ("terminals",), "get_terminals", summary="Terminals and what each shows"),
    Route("GET", ("terminals", "*"), "get_terminal", summary="One terminal"),
    Route("GET", ("terminals", "*", "snapshot.png"), "get_snapshot", summary="A terminal's screen"),
    Route("GET", ("desktops",), "get_desktops", summary="Desktops, their state and holders"),
    Route("POST", ("desktops", "*", "start"), "post_desktop_start", ADMIN, summary="Start"),
    Route("POST", ("desktops", "*", "stop"), "post_desktop_stop", ADMIN, summary="Stop"),
    Route("POST", ("desktops", "*", "reset"), "post_desktop_reset", ADMIN, summary="Reset"),
    Route("DELETE", ("desktops", "*"), "delete_desktop", ADMIN, summary="Forget a desktop"),
    Route("POST", ("pair",), "post_pair", ADMIN, summary="Pair a terminal with a desktop"),
    Route("POST", ("pair-code",), "post_pair_code", ADMIN, summary="Pair by a screen's code"),
    Route("POST", ("unpair",), "post_unpair", ADMIN, summary="Remove a terminal's pairing"),
    Route("DELETE", ("terminals", "*"), "delete_terminal", ADMIN, summary="Forget a terminal"),
    Route("POST", ("kick",), "post_kick", HELPDESK, summary="Disconnect a terminal"),
    Route("POST", ("shadow",), "post_shadow", ADMIN, summary="Let a terminal watch a desktop"),
    Route("POST", ("unshadow",), "post_unshadow", ADMIN, summary="Stop a terminal watching"),
    Route("GET", ("users",), "get_users", summary="Hot-desking users"),
    Route("POST", ("users",), "post_users", ADMIN, summary="Add a user"),
    Route("DELETE", ("users", "*"), "delete_user", ADMIN, summary="Remove a user"),
    Route("GET", ("sessions",), "get_sessions", summary="Session history, newest first"),
    Route("GET", ("audit",), "get_audit", summary="The audit log"),
)
ROUTES = CORE_ROUTES


class LocalControl(Protocol):
    """The ``[[local_desktop]]`` sessions, which thinserve keeps running outside
    the desktop manager: an admin may still stop and start them."""

    def names(self) -> list[str]: ...

    def stop(self, name: str) -> defer.Deferred[None]: ...

    def start(self, name: str) -> defer.Deferred[None]: ...


class AdminAPI:
    """What administrators can see and do, on the hub and its broker's store."""

    def __init__(
        self,
        hub: Hub,
        info: Callable[[], dict[str, Any]] | None = None,
        desktops: DesktopManager | None = None,
        local: LocalControl | None = None,
    ) -> None:
        self.hub = hub
        self.desktops = desktops
        self.local = local
        self.broker = hub.broker
        self.store: Store = hub.broker.store
        self.views = Views(hub)
        self.info = info or dict
        # Route owners beside this object (Route.owner): the accounts' handlers
        # and the dashboard's viewers, when the server has them.
        self.accounts: AccountsAPI | None = None
        self.viewers: ViewersAPI | None = None

    # -- reading ----------------------------------------------------------------------------
    def get_state(self, call: Call) -> dict[str, Any]:
        state = self.broker.snapshot()
        return {
            "server": self.info(),
            "connected": sorted(state.connected),
            "logins": state.logins,
            "watchers": state.watchers,
            "leases": {desktop: ":".join(holder) for desktop, holder in state.leases.items()},
            "desktops": {name: state_word(s) for name, s in state.desktops.items()},
            "shown": {t: shows(a) for t, a in state.shown.items()},
            "pairings": {p.terminal_id: p.desktop for p in self.store.list_pairings()},
        }

    def get_terminals(self, call: Call) -> list[dict[str, Any]]:
        view = self.views.picture()
        return [self.views.terminal(record, view) for record in self._terminal_records()]

    def get_terminal(self, call: Call) -> dict[str, Any]:
        record = self._known_terminal(call.params[0])
        return self.views.terminal(record, self.views.picture())

    def get_snapshot(self, call: Call) -> defer.Deferred[bytes]:
        session = self._live_session(call.params[0])
        if session.view is None:
            raise ApiError(409, f"terminal {call.params[0]!r} shows nothing yet", "try again")
        frame = np.array(session.view.framebuffer, dtype=np.uint32, copy=True)
        return threads.deferToThread(encode_png, frame)

    def get_desktops(self, call: Call) -> list[dict[str, Any]]:
        view = self.views.picture()
        return [self.views.desktop(d, view) for d in self.store.list_desktops()]

    def get_users(self, call: Call) -> list[dict[str, Any]]:
        return self.views.users()

    def get_sessions(self, call: Call) -> list[dict[str, Any]]:
        fields.only_keys(call.query, {"limit", "terminal", "before"}, "query parameter")
        limit = fields.limit(call.query, 50)
        terminal = call.query.get("terminal") or None
        before = fields.whole(call.query, "before", 0, 1, 2**62) if "before" in call.query else None
        return [
            {
                "id": s.id,
                "terminal": s.terminal_id,
                "desktop": s.desktop,
                "user": s.user,
                "started": s.started,
                "ended": s.ended,
            }
            for s in self.store.list_sessions(limit=limit, terminal_id=terminal, before_id=before)
        ]

    def get_audit(self, call: Call) -> list[dict[str, Any]]:
        allowed = {"limit", "subject", "actor", "action", "after", "before"}
        fields.only_keys(call.query, allowed, "query parameter")
        limit = fields.limit(call.query, 50)
        subject = call.query.get("subject") or None
        keep = _audit_filter(call.query.get("actor") or "", call.query.get("action") or "")
        if "after" in call.query and "before" in call.query:
            raise ApiError(400, "give 'after' or 'before', not both", "after: newer; before: older")
        if "after" in call.query:
            after = fields.whole(call.query, "after", 0, 0, 2**62)
            entries = self.store.list_audit(after_id=after, limit=limit, subject=subject)
            entries = [e for e in entries if keep is None or keep(e)]
        else:
            before = (
                fields.whole(call.query, "before", 0, 1, 2**62) if "before" in call.query else None
            )
            entries = latest_audit(self.store, limit, subject, before, keep)
        return [
            {
                "id": e.id,
                "time": e.time,
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "detail": e.detail,
            }
            for e in entries
        ]

    # -- acting -----------------------------------------------------------------------------
    def post_pair(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"terminal", "desktop", "new", "by_address"}, "field")
        terminal_id = fields.text(call.body, "terminal")
        desktop = fields.text(call.body, "desktop")
        _check_pairable(terminal_id, fields.flag(call.body, "by_address"))
        if not fields.flag(call.body, "new"):
            self._known_terminal(terminal_id)
        self._known_desktop(desktop)
        self.hub.pair(terminal_id, desktop, call.actor)
        return self._done(terminal_id, True)

    def post_pair_code(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"code", "desktop", "by_address"}, "field")
        code, desktop = fields.text(call.body, "code"), fields.text(call.body, "desktop")
        by_address = fields.flag(call.body, "by_address")
        self._known_desktop(desktop)
        normal = normalise_code(code, self.broker.config.code_length)
        record = self.store.get_pairing_code(normal) if normal else None
        try:
            self.hub.pair_code(code, desktop, call.actor, by_address=by_address)
        except PairingCodeError as exc:
            self.hub.apply(exc.changes)  # a locked code is replaced on its screen
            raise
        if record is None:  # accepted, so stored a moment ago; never expected
            return {"ok": True, "changed": True, "terminal": None}
        paired = by_address_id(record.terminal_id) if by_address else record.terminal_id
        return self._done(paired or record.terminal_id, True)

    def post_unpair(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"terminal"}, "field")
        terminal_id = fields.text(call.body, "terminal")
        self._known_terminal(terminal_id)
        changed = self.store.pairing_for(terminal_id) is not None
        self.hub.unpair(terminal_id, call.actor)
        return self._done(terminal_id, changed)

    def delete_terminal(self, call: Call) -> dict[str, Any]:
        """Forget a terminal that is not connected: its record, pairing and code."""
        terminal_id = call.params[0]
        self._known_terminal(terminal_id)
        if self.broker.is_connected(terminal_id):
            raise ApiError(
                409, f"terminal {terminal_id!r} is connected", "kick it first, then forget it"
            )
        with self.store.atomic():
            self.broker.record(call.actor, "terminal-forget", terminal_id)
            self.broker.forget_terminal(terminal_id, f"forgotten by {call.actor}")
        return {"ok": True, "changed": True, "terminal": None}

    def post_kick(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"terminal"}, "field")
        terminal_id = fields.text(call.body, "terminal")
        elsewhere = not self.broker.is_connected(terminal_id)
        known = self.store.get_terminal(terminal_id) is not None
        if elsewhere and known and self.hub.kick_elsewhere(terminal_id, call.actor):
            return {**self._done(terminal_id, True), "elsewhere": True}
        self._live_session(terminal_id)
        self.hub.kick(terminal_id, call.actor)
        return self._done(terminal_id, True)

    def post_shadow(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"terminal", "desktop"}, "field")
        terminal_id = fields.text(call.body, "terminal")
        desktop = fields.text(call.body, "desktop")
        self._live_session(terminal_id)
        self._known_desktop(desktop)
        self.hub.shadow(terminal_id, desktop, call.actor)
        return self._done(terminal_id, True)

    def post_unshadow(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"terminal"}, "field")
        terminal_id = fields.text(call.body, "terminal")
        self._known_terminal(terminal_id)
        changed = terminal_id in self.broker.snapshot().watchers
        self.hub.unshadow(terminal_id, call.actor)
        return self._done(terminal_id, changed)

    def post_users(self, call: Call) -> dict[str, Any]:
        fields.only_keys(call.body, {"name", "secret", "desktop"}, "field")
        name = fields.text(call.body, "name")
        secret = fields.secret(call.body)
        desktop = None
        if call.body.get("desktop") is not None:
            desktop = fields.text(call.body, "desktop")
            self._known_desktop(desktop)
        self.hub.apply(self.broker.add_user(name, secret, call.actor, desktop))
        user = next((u for u in self.views.users() if u["name"] == name), None)
        return {"ok": True, "changed": True, "user": user}

    def delete_user(self, call: Call) -> dict[str, Any]:
        name = call.params[0]
        if self.store.get_user(name) is None:
            known = [u.name for u in self.store.list_users()]
            raise not_found("user", name, known, "see `thinserve users list`")
        self.hub.apply(self.broker.delete_user(name, call.actor))
        return {"ok": True, "changed": True, "user": None}

    # -- desktops ---------------------------------------------------------------------------
    def post_desktop_start(self, call: Call) -> defer.Deferred[dict[str, Any]]:
        """Start a desktop now; answers once it runs or failed to start."""
        fields.only_keys(call.body, set(), "field")
        local = self._local(call)
        if local is not None:
            self.broker.record(call.actor, "desktop-start", call.params[0])
            return self._local_done(call, local.start(call.params[0]))
        name, manager = self._run_by_thinserve(call)
        problem = manager.check(name)
        if problem:
            raise ApiError(409, f"desktop {name!r} cannot start: {problem}", "fix that, then retry")
        self.broker.record(call.actor, "desktop-start", name)
        return manager.want(name).addCallback(lambda _: self._desktop_done(name))

    def post_desktop_stop(self, call: Call) -> defer.Deferred[dict[str, Any]]:
        """Stop a desktop now (a terminal still given it starts it again; a local
        desktop stays stopped until ``desktops start``)."""
        fields.only_keys(call.body, set(), "field")
        local = self._local(call)
        if local is not None:
            self.broker.record(call.actor, "desktop-stop", call.params[0])
            return self._local_done(call, local.stop(call.params[0]))
        name, manager = self._run_by_thinserve(call)
        self.broker.record(call.actor, "desktop-stop", name)
        return manager.stop(name).addCallback(lambda _: self._desktop_done(name))

    def post_desktop_reset(self, call: Call) -> defer.Deferred[dict[str, Any]]:
        """Back to its template (or a fresh session) before its next start; a
        local desktop is started afresh at once."""
        fields.only_keys(call.body, set(), "field")
        local = self._local(call)
        if local is not None:
            name = call.params[0]
            self.broker.record(call.actor, "desktop-reset", name)
            fresh = local.stop(name).addCallback(lambda _: local.start(name))
            return self._local_done(call, fresh)
        name, manager = self._run_by_thinserve(call)
        self.broker.record(call.actor, "desktop-reset", name)
        return manager.reset(name).addCallback(lambda _: self._desktop_done(name))

    def delete_desktop(self, call: Call) -> dict[str, Any]:
        """Forget a desktop no longer configured: its record and its pairings."""
        name = call.params[0]
        self._known_desktop(name)
        if self.broker.is_registered(name):
            raise ApiError(
                409,
                f"desktop {name!r} is configured; only desktops removed from the "
                "configuration can be forgotten",
                "remove it from the config file and reload thinserve "
                "(systemctl reload thinserve) first",
            )
        self.broker.forget_desktop(name, call.actor)
        return {"ok": True, "changed": True, "desktop": None}

    def _run_by_thinserve(self, call: Call) -> tuple[str, DesktopManager]:
        """The desktop named in the path, which thinserve starts and stops itself."""
        name = call.params[0]
        self._known_desktop(name)
        manager = self.desktops
        md = manager.desktops.get(name) if manager is not None else None
        if manager is None or md is None:
            raise ApiError(409, f"desktop {name!r} is not configured", "see `thinserve desktops`")
        if md.backend is None:
            raise ApiError(
                409,
                f"desktop {name!r} is a VNC server thinserve does not run",
                "start, stop or reset it where it runs",
            )
        return name, manager

    def _local(self, call: Call) -> LocalControl | None:
        """The local desktops, when the desktop in the path is one of them."""
        name = call.params[0]
        self._known_desktop(name)
        local = self.local
        return local if local is not None and name in local.names() else None

    def _local_done(self, call: Call, done: defer.Deferred[None]) -> defer.Deferred[dict[str, Any]]:
        return done.addCallback(lambda _: self._desktop_done(call.params[0]))

    def _desktop_done(self, name: str) -> dict[str, Any]:
        record = self.store.get_desktop(name)
        row = self.views.desktop(record, self.views.picture()) if record is not None else None
        return {"ok": True, "changed": True, "desktop": row}

    # -- lookups ----------------------------------------------------------------------------
    def _terminal_records(self) -> list[TerminalRecord]:
        """Terminals seen, plus terminals paired before they ever connected."""
        records = {t.id: t for t in self.store.list_terminals()}
        for pairing in self.store.list_pairings():
            records.setdefault(pairing.terminal_id, TerminalRecord(pairing.terminal_id))
        return [records[key] for key in sorted(records)]

    def _record(self, terminal_id: str) -> TerminalRecord | None:
        record = self.store.get_terminal(terminal_id)
        if record is None and self.store.pairing_for(terminal_id) is not None:
            return TerminalRecord(terminal_id)
        return record

    def _known_terminal(self, terminal_id: str) -> TerminalRecord:
        record = self._record(terminal_id)
        if record is None:
            known = [t.id for t in self._terminal_records()]
            raise not_found("terminal", terminal_id, known, "see `thinserve terminals`")
        return record

    def _known_desktop(self, name: str) -> DesktopRecord:
        record = self.store.get_desktop(name)
        if record is None:
            known = [d.name for d in self.store.list_desktops()]
            raise not_found("desktop", name, known, "see `thinserve desktops`")
        return record

    def _live_session(self, terminal_id: str) -> TerminalSession:
        self._known_terminal(terminal_id)
        terminal = self.hub.terminals.get(terminal_id)
        if terminal is None or terminal.session.proto is None:
            raise ApiError(409, f"terminal {terminal_id!r} is not connected", NOT_CONNECTED_HINT)
        return terminal.session

    def _done(self, terminal_id: str, changed: bool) -> dict[str, Any]:
        """The answer to a change: whether it changed anything, and the terminal now."""
        record = self._record(terminal_id)
        row = self.views.terminal(record, self.views.picture()) if record is not None else None
        return {"ok": True, "changed": changed, "terminal": row}


def _audit_filter(actor: str, action: str) -> Callable[[AuditEntry], bool] | None:
    """Entries whose actor contains ``actor`` and whose action is ``action``."""
    if not actor and not action:
        return None
    return lambda e: actor in e.actor and (not action or e.action == action)


def _check_pairable(terminal_id: str, by_address: bool) -> None:
    """Only a key proves a terminal; an address binds only when the admin says so."""
    kind = kind_of(terminal_id)
    if kind == "address" and not by_address:
        raise ApiError(
            409,
            f"{terminal_id!r} is known only by its address: anything at that address "
            "would get the desktop",
            "add --by-address if you trust every device that can use that address",
        )
    if kind == "claimed":
        raise ApiError(
            409,
            f"no connection can prove the id {terminal_id!r}",
            "terminals are known by their key (key-...) or, if you choose, their address "
            "(viewer-ADDRESS): see thinserve terminals",
        )
