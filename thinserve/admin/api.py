"""The admin API: JSON over HTTP on a local Unix socket, served by thinserve.

Every endpoint lives under /api/v1 (docs/admin.md lists them with their
bodies and answers).  Whoever can open the socket is an administrator: the
socket is mode 0600 inside a 0700 directory, so only thinserve's own user
and root get in; the API also checks the peer's uid (SO_PEERCRED) and
writes that user to the audit log as the actor, e.g. "admin:root".

Requests are bounded (64 KiB bodies, JSON objects with known keys only);
errors are JSON ``{"error": ..., "hint": ...}`` with a fitting HTTP status.
The operations run on the reactor thread, like the broker; only PNG
encoding of snapshots runs in a worker thread, on a copy of the pixels.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image
from twisted.internet import defer, endpoints, threads
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from ..broker import (
    Assignment,
    BrokerError,
    BrokerState,
    NotConnectedError,
    PairingCodeError,
    ShowDesktop,
    ShowScreen,
    by_address_id,
    normalise_code,
)
from ..broker.core import MAX_ID
from ..hub import Hub
from ..relay.session import TerminalSession
from ..store.base import (
    AuditEntry,
    CorruptError,
    DiskFullError,
    Store,
    StoreError,
    StoreFault,
)
from ..store.base import Desktop as DesktopRecord
from ..store.base import Terminal as TerminalRecord
from ..terminal_ids import kind_of
from . import API_PREFIX, SOCKET_NAME

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_SECRET = 128  # what the login screen lets a user type
MIN_SECRET = 4
MAX_LIMIT = 1000
HINT_NAMES = 10  # known names listed in a hint; the answer's "known" has more
MAX_KNOWN = 100
AUDIT_PAGE = 500
IDLE_TIMEOUT = 60  # seconds before an idle admin connection is closed
JSON_TYPE = b"application/json"


class ApiError(Exception):
    """An answer other than success: HTTP ``status`` and a JSON body."""

    def __init__(self, status: int, message: str, hint: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload: dict[str, Any] = {"error": message, "hint": hint, **extra}


@dataclass(frozen=True)
class Call:
    """One request, parsed: who asks, path parameters, query and JSON body."""

    actor: str
    params: tuple[str, ...]
    query: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # "*" matches one path segment
    handler: str  # an AdminAPI method taking a Call


ROUTES = (
    Route("GET", ("state",), "get_state"),
    Route("GET", ("terminals",), "get_terminals"),
    Route("GET", ("terminals", "*"), "get_terminal"),
    Route("GET", ("terminals", "*", "snapshot.png"), "get_snapshot"),
    Route("GET", ("desktops",), "get_desktops"),
    Route("POST", ("pair",), "post_pair"),
    Route("POST", ("pair-code",), "post_pair_code"),
    Route("POST", ("unpair",), "post_unpair"),
    Route("POST", ("kick",), "post_kick"),
    Route("POST", ("shadow",), "post_shadow"),
    Route("POST", ("unshadow",), "post_unshadow"),
    Route("GET", ("users",), "get_users"),
    Route("POST", ("users",), "post_users"),
    Route("DELETE", ("users", "*"), "delete_user"),
    Route("GET", ("sessions",), "get_sessions"),
    Route("GET", ("audit",), "get_audit"),
)


# -- the operations ---------------------------------------------------------------------------
class AdminAPI:
    """What administrators can see and do, on the hub and its broker's store."""

    def __init__(self, hub: Hub, info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.store: Store = hub.broker.store
        self.info = info or dict

    # -- reading ----------------------------------------------------------------------------
    def get_state(self, call: Call) -> dict[str, Any]:
        state = self.broker.snapshot()
        return {
            "server": self.info(),
            "connected": sorted(state.connected),
            "logins": state.logins,
            "watchers": state.watchers,
            "leases": {desktop: ":".join(holder) for desktop, holder in state.leases.items()},
            "desktops": {name: s.value for name, s in state.desktops.items()},
            "shown": {t: _shows(a) for t, a in state.shown.items()},
            "pairings": {p.terminal_id: p.desktop for p in self.store.list_pairings()},
        }

    def get_terminals(self, call: Call) -> list[dict[str, Any]]:
        view = _Picture(self.broker.snapshot(), self.store)
        return [self._terminal_view(record, view) for record in self._terminal_records()]

    def get_terminal(self, call: Call) -> dict[str, Any]:
        record = self._known_terminal(call.params[0])
        return self._terminal_view(record, _Picture(self.broker.snapshot(), self.store))

    def get_snapshot(self, call: Call) -> defer.Deferred[bytes]:
        session = self._live_session(call.params[0])
        if session.view is None:
            raise ApiError(409, f"terminal {call.params[0]!r} shows nothing yet", "try again")
        frame = np.array(session.view.framebuffer, dtype=np.uint32, copy=True)
        return threads.deferToThread(encode_png, frame)

    def get_desktops(self, call: Call) -> list[dict[str, Any]]:
        view = _Picture(self.broker.snapshot(), self.store)
        return [self._desktop_view(d, view) for d in self.store.list_desktops()]

    def get_users(self, call: Call) -> list[dict[str, Any]]:
        at = {user: terminal for terminal, user in self.broker.snapshot().logins.items()}
        return [
            {
                "name": u.name,
                "desktop": u.desktop,
                "created": u.created,
                "logged_in_at": at.get(u.name),
            }
            for u in self.store.list_users()
        ]

    def get_sessions(self, call: Call) -> list[dict[str, Any]]:
        _only_keys(call.query, {"limit", "terminal"}, "query parameter")
        limit = _limit(call.query, 50)
        terminal = call.query.get("terminal") or None
        return [
            {
                "id": s.id,
                "terminal": s.terminal_id,
                "desktop": s.desktop,
                "user": s.user,
                "started": s.started,
                "ended": s.ended,
            }
            for s in self.store.list_sessions(limit=limit, terminal_id=terminal)
        ]

    def get_audit(self, call: Call) -> list[dict[str, Any]]:
        _only_keys(call.query, {"limit", "subject", "after"}, "query parameter")
        limit = _limit(call.query, 50)
        subject = call.query.get("subject") or None
        if "after" in call.query:
            after = _int(call.query, "after", 0, 0, 2**62)
            entries = self.store.list_audit(after_id=after, limit=limit, subject=subject)
        else:
            entries = latest_audit(self.store, limit, subject)
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

    # -- acting -------------------------------------------------------------------------------
    def post_pair(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"terminal", "desktop", "new", "by_address"}, "field")
        terminal_id, desktop = _text(call.body, "terminal"), _text(call.body, "desktop")
        _check_pairable(terminal_id, _flag(call.body, "by_address"))
        if not _flag(call.body, "new"):
            self._known_terminal(terminal_id)
        self._known_desktop(desktop)
        self.hub.pair(terminal_id, desktop, call.actor)
        return self._done(terminal_id, True)

    def post_pair_code(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"code", "desktop", "by_address"}, "field")
        code, desktop = _text(call.body, "code"), _text(call.body, "desktop")
        by_address = _flag(call.body, "by_address")
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
        _only_keys(call.body, {"terminal"}, "field")
        terminal_id = _text(call.body, "terminal")
        self._known_terminal(terminal_id)
        changed = self.store.pairing_for(terminal_id) is not None
        self.hub.unpair(terminal_id, call.actor)
        return self._done(terminal_id, changed)

    def post_kick(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"terminal"}, "field")
        terminal_id = _text(call.body, "terminal")
        self._live_session(terminal_id)
        self.hub.kick(terminal_id, call.actor)
        return self._done(terminal_id, True)

    def post_shadow(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"terminal", "desktop"}, "field")
        terminal_id, desktop = _text(call.body, "terminal"), _text(call.body, "desktop")
        self._live_session(terminal_id)
        self._known_desktop(desktop)
        self.hub.shadow(terminal_id, desktop, call.actor)
        return self._done(terminal_id, True)

    def post_unshadow(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"terminal"}, "field")
        terminal_id = _text(call.body, "terminal")
        self._known_terminal(terminal_id)
        changed = terminal_id in self.broker.snapshot().watchers
        self.hub.unshadow(terminal_id, call.actor)
        return self._done(terminal_id, changed)

    def post_users(self, call: Call) -> dict[str, Any]:
        _only_keys(call.body, {"name", "secret", "desktop"}, "field")
        name = _text(call.body, "name")
        secret = _secret(call.body)
        desktop = _text(call.body, "desktop") if call.body.get("desktop") is not None else None
        if desktop is not None:
            self._known_desktop(desktop)
        self.hub.apply(self.broker.add_user(name, secret, call.actor, desktop))
        return {"ok": True, "changed": True, "user": self._user_view(name)}

    def delete_user(self, call: Call) -> dict[str, Any]:
        name = call.params[0]
        if self.store.get_user(name) is None:
            known = [u.name for u in self.store.list_users()]
            raise _not_found("user", name, known, "see `thinserve users list`")
        self.hub.apply(self.broker.delete_user(name, call.actor))
        return {"ok": True, "changed": True, "user": None}

    # -- lookups ------------------------------------------------------------------------------
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
            raise _not_found("terminal", terminal_id, known, "see `thinserve terminals`")
        return record

    def _known_desktop(self, name: str) -> DesktopRecord:
        record = self.store.get_desktop(name)
        if record is None:
            known = [d.name for d in self.store.list_desktops()]
            raise _not_found("desktop", name, known, "see `thinserve desktops`")
        return record

    def _live_session(self, terminal_id: str) -> TerminalSession:
        self._known_terminal(terminal_id)
        terminal = self.hub.terminals.get(terminal_id)
        if terminal is None or terminal.session.proto is None:
            raise ApiError(
                409,
                f"terminal {terminal_id!r} is not connected",
                "it must be connected for this; see `thinserve terminals`",
            )
        return terminal.session

    def _done(self, terminal_id: str, changed: bool) -> dict[str, Any]:
        view = _Picture(self.broker.snapshot(), self.store)
        record = self._record(terminal_id)
        row = self._terminal_view(record, view) if record is not None else None
        return {"ok": True, "changed": changed, "terminal": row}

    # -- views --------------------------------------------------------------------------------
    def _terminal_view(self, record: TerminalRecord, view: _Picture) -> dict[str, Any]:
        shown = view.state.shown.get(record.id)
        live = self.hub.terminals.get(record.id)
        return {
            "id": record.id,
            "identity": kind_of(record.id),
            "name": record.name,
            "model": record.model,
            "address": record.address,
            "screen": _size(record.screen_width, record.screen_height),
            "last_seen": record.last_seen or None,
            "connected": record.id in view.state.connected,
            "shows": _shows(shown),
            "pairing_code": shown.code if isinstance(shown, ShowScreen) else None,
            "paired_desktop": view.paired.get(record.id),
            "user": view.state.logins.get(record.id),
            "watching": view.state.watchers.get(record.id),
            "session": _session_view(live.session) if live is not None else None,
        }

    def _desktop_view(self, desktop: DesktopRecord, view: _Picture) -> dict[str, Any]:
        mirror = self.hub.mirrors.get(desktop.name)
        controllers, watchers = _viewers(view.state.shown, desktop.name)
        controller = controllers[0] if controllers else None
        state = view.state.desktops.get(desktop.name)
        live = mirror is not None and mirror.state == "live"
        holder = view.state.leases.get(desktop.name)
        return {
            "name": desktop.name,
            "backend": desktop.backend,
            "pool": desktop.pool,
            "configured": mirror is not None,
            "state": state.value if state is not None else None,
            "mirror": mirror.state if mirror is not None else None,
            "detail": mirror.detail if mirror is not None else "",
            "size": _size(mirror.width, mirror.height) if live and mirror is not None else None,
            "controlled_by": controller,
            "controlling_user": view.state.logins.get(controller) if controller else None,
            "watchers": watchers,
            "paired_terminal": view.paired_desktops.get(desktop.name),
            "owner": view.owners.get(desktop.name),
            "lease": ":".join(holder) if holder is not None else None,
        }

    def _user_view(self, name: str) -> dict[str, Any] | None:
        return next((u for u in self.get_users(_NO_CALL) if u["name"] == name), None)


_NO_CALL = Call("", (), {}, {})


class _Picture:
    """The broker's live state with the store's pairings and owners, read once."""

    def __init__(self, state: BrokerState, store: Store) -> None:
        self.state = state
        pairings = store.list_pairings()
        self.paired = {p.terminal_id: p.desktop for p in pairings}
        self.paired_desktops = {p.desktop: p.terminal_id for p in pairings}
        self.owners = {u.desktop: u.name for u in store.list_users() if u.desktop}


def _shows(assignment: Assignment | None) -> dict[str, Any] | None:
    if assignment is None:
        return None
    if isinstance(assignment, ShowDesktop):
        return {"kind": "desktop", "desktop": assignment.desktop, "control": assignment.control}
    return {
        "kind": assignment.kind.value,
        "message": assignment.message,
        "code": assignment.code,
        "desktop": assignment.desktop,
        "progress": assignment.progress,
    }


def _viewers(shown: dict[str, Assignment], desktop: str) -> tuple[list[str], list[str]]:
    """Terminals showing ``desktop``: those in control, and those watching."""
    on = [(t, a) for t, a in sorted(shown.items()) if isinstance(a, ShowDesktop)]
    controllers = [t for t, a in on if a.desktop == desktop and a.control]
    watchers = [t for t, a in on if a.desktop == desktop and not a.control]
    return controllers, watchers


def _session_view(session: TerminalSession) -> dict[str, Any]:
    return {
        "width": session.width,
        "height": session.height,
        "bytes_sent": session.bytes_sent,
        "updates_sent": session.updates_sent,
    }


def _size(width: int, height: int) -> dict[str, int] | None:
    return {"width": int(width), "height": int(height)} if width and height else None


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


def latest_audit(store: Store, limit: int, subject: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, oldest first.

    The Store lists entries oldest first after an id, so find the newest id
    (a logarithmic search) and read back from there; with a subject, page
    through that subject's entries keeping only the tail.
    """
    if subject is not None:
        tail: deque[AuditEntry] = deque(maxlen=limit)
        after = 0
        while page := store.list_audit(after_id=after, limit=AUDIT_PAGE, subject=subject):
            tail.extend(page)
            after = page[-1].id
        return list(tail)
    last = _last_audit_id(store)
    return store.list_audit(after_id=max(0, last - limit), limit=limit)


def _last_audit_id(store: Store) -> int:
    def first_after(entry_id: int) -> int | None:
        found = store.list_audit(after_id=entry_id, limit=1)
        return found[0].id if found else None

    low = first_after(0)  # an id that exists; the newest is >= low
    if low is None:
        return 0
    high = low * 2  # no id above high once the doubling stops
    while (found := first_after(high)) is not None:
        low, high = found, found * 2
    while (after_low := first_after(low)) is not None:
        low = after_low
        middle = (low + high) // 2
        found = first_after(middle)
        if found is None:
            high = middle
        else:
            low = found
    return low


def encode_png(frame: np.ndarray) -> bytes:
    """A 0x00RRGGBB frame as PNG bytes (vectorised channel split, then zlib)."""
    shifts = np.array([16, 8, 0], dtype=np.uint32)
    rgb = ((frame[..., None] >> shifts) & 0xFF).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG", compress_level=3)
    return out.getvalue()


# -- request parsing --------------------------------------------------------------------------
def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key!r} must be a non-empty string", _BODY_HINT)
    if len(value) > MAX_ID or not value.isprintable():
        raise ApiError(400, f"{key!r} must be 1 to {MAX_ID} printable characters", _BODY_HINT)
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{key!r} must be true or false", _BODY_HINT)
    return value


def _secret(body: dict[str, Any]) -> str:
    """The PIN or password: something a user can type at the login screen."""
    secret = body.get("secret")
    typable = isinstance(secret, str) and all(
        0x20 <= ord(c) <= 0x7E or 0xA0 <= ord(c) <= 0xFF for c in secret
    )
    if not typable or not MIN_SECRET <= len(secret) <= MAX_SECRET:  # type: ignore[arg-type]
        raise ApiError(
            400,
            f"'secret' must be {MIN_SECRET} to {MAX_SECRET} characters a terminal can type",
            "use letters, digits, spaces and punctuation (Latin-1)",
        )
    return secret  # type: ignore[return-value]


def _only_keys(data: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(
            400,
            f"unknown {what}(s) {', '.join(map(repr, unknown))}",
            f"allowed: {', '.join(sorted(allowed))}",
        )


def _limit(query: dict[str, str], default: int) -> int:
    return _int(query, "limit", default, 1, MAX_LIMIT)


def _int(query: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not low <= int(text) <= high:
        raise ApiError(400, f"{key} must be a whole number from {low} to {high}", "")
    return int(text)


def _not_found(kind: str, name: str, known: Iterable[str], hint: str) -> ApiError:
    ordered = closest_first(name, known)[:MAX_KNOWN]
    if ordered:
        listed = ", ".join(ordered[:HINT_NAMES])
        more = f" and {len(ordered) - HINT_NAMES} more" if len(ordered) > HINT_NAMES else ""
        hint = f"known {kind}s, closest first: {listed}{more}; {hint}"
    else:
        hint = f"no {kind}s are known yet; {hint}"
    return ApiError(404, f"no {kind} {name!r}", hint, known=ordered)


def closest_first(name: str, known: Iterable[str]) -> list[str]:
    """``known`` ordered by likeness to ``name`` (difflib ratio), then by name."""
    return sorted(known, key=lambda k: (-difflib.SequenceMatcher(None, name, k).ratio(), k))


_BODY_HINT = "send a JSON object; see docs/admin.md for each endpoint's fields"


def broker_error(exc: BrokerError) -> ApiError:
    """The HTTP answer for a request the broker refused, with its message."""
    text = str(exc)
    if isinstance(exc, NotConnectedError):
        return ApiError(409, text, "it must be connected for this; see `thinserve terminals`")
    if isinstance(exc, PairingCodeError):
        if text.startswith("too many"):
            return ApiError(429, text, "wait, then type the code again")
        return ApiError(
            404, text, "read the code again from the terminal's screen; codes are single use"
        )
    if "not registered" in text or text.startswith("no user"):
        return ApiError(404, text, "see `thinserve desktops` and `thinserve users list`")
    conflicts = ("exists already", "belongs to", "is paired with", "already connected")
    if any(word in text for word in conflicts):
        return ApiError(409, text, "free it first (unpair, or change the user's desktop)")
    return ApiError(400, text, "")


def store_error(exc: StoreError) -> ApiError:
    """The HTTP answer when the store failed: 507 Insufficient Storage for a
    full disk, 500 for a damaged database, 503 while it is locked, read-only
    or failing (retry once the hint is followed); 409 for a conflict."""
    if not isinstance(exc, StoreFault):
        return ApiError(409, str(exc), "check thinserve's log")
    if isinstance(exc, DiskFullError):
        status = 507
    elif isinstance(exc, CorruptError):
        status = 500
    else:
        status = 503
    return ApiError(status, exc.problem, exc.hint)


# -- HTTP -------------------------------------------------------------------------------------
class BoundedRequest(server.Request):
    """A request whose body is kept in memory up to MAX_BODY, then dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_size = 0
        self.too_large = False

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self.too_large = length is not None and length > MAX_BODY

    def handleContentChunk(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size > MAX_BODY:
            self.too_large = True
        if not self.too_large:
            self.content.write(data)


class AdminResource(resource.Resource):
    """Routes /api/v1/... to AdminAPI methods and turns answers into JSON."""

    isLeaf = True

    def __init__(
        self, api: AdminAPI, actor_of: Callable[[server.Request], str] | None = None
    ) -> None:
        super().__init__()
        self.api = api
        self.actor_of = actor_of or peer_actor

    def render(self, request: server.Request) -> bytes | int:
        try:
            result = self._call(request)
        except ApiError as exc:
            return _json(request, exc.status, exc.payload)
        except BrokerError as exc:
            error = broker_error(exc)
            return _json(request, error.status, error.payload)
        except StoreError as exc:
            error = store_error(exc)
            if isinstance(exc, StoreFault):
                what = (request.method + b" " + request.uri[:200]).decode("ascii", "replace")
                log.error("admin request %s failed: %s", what, exc)
            return _json(request, error.status, error.payload)
        except Exception:
            log.exception("admin request %s failed", request.uri[:200])
            body = {"error": "internal error", "hint": "see thinserve's log"}
            return _json(request, 500, body)
        if isinstance(result, defer.Deferred):
            return _later(request, result)
        return _json(request, 200, result)

    def _call(self, request: server.Request) -> Any:
        actor = self.actor_of(request)
        method = request.method.decode("ascii", "replace")
        route, params = _route(method, _segments(request.path))
        query = _query(request)
        body = _body(request) if method in ("POST", "PUT", "PATCH") else {}
        return getattr(self.api, route.handler)(Call(actor, params, query, body))


def _segments(path: bytes) -> list[str]:
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(400, "the path must be ASCII (percent-encode the rest)", "") from None
    prefix = API_PREFIX.strip("/").split("/")
    parts = text.strip("/").split("/")
    if parts[: len(prefix)] != prefix:
        raise ApiError(404, f"no such path {text[:200]!r}", f"the API lives under {API_PREFIX}/")
    try:
        return [unquote(p, errors="strict") for p in parts[len(prefix) :]]
    except UnicodeDecodeError:
        raise ApiError(400, "path segments must be UTF-8", "") from None


def _route(method: str, segments: list[str]) -> tuple[Route, tuple[str, ...]]:
    allowed = []
    for route in ROUTES:
        if len(route.pattern) != len(segments):
            continue
        if all(p == "*" or p == s for p, s in zip(route.pattern, segments, strict=True)):
            if route.method == method:
                params = tuple(s for p, s in zip(route.pattern, segments, strict=True) if p == "*")
                return route, params
            allowed.append(route.method)
    path = API_PREFIX + "/" + "/".join(segments)
    if allowed:
        raise ApiError(405, f"{method} is not allowed on {path[:200]}", f"use {', '.join(allowed)}")
    raise ApiError(404, f"no such endpoint {path[:200]!r}", "see docs/admin.md for the endpoints")


def _query(request: server.Request) -> dict[str, str]:
    query = {}
    for key, values in (request.args or {}).items():
        try:
            query[key.decode()] = values[-1].decode()
        except UnicodeDecodeError:
            raise ApiError(400, "query parameters must be UTF-8", "") from None
    return query


def _body(request: server.Request) -> dict[str, Any]:
    if getattr(request, "too_large", False):
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes", "send less")
    header = request.getHeader(b"content-type") or b""
    if header.split(b";")[0].strip().lower() != JSON_TYPE:
        raise ApiError(415, "send the body as application/json", "set Content-Type")
    request.content.seek(0)
    try:
        body = json.loads(request.content.read())
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON", _BODY_HINT) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", _BODY_HINT)
    return body


def _json(request: server.Request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE + b"; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


def _later(request: server.Request, result: defer.Deferred[bytes]) -> int:
    """Answer with a PNG once ``result`` has it."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda failure: gone.append(True))

    def send(png: bytes) -> None:
        if gone:
            return
        request.setHeader(b"Content-Type", b"image/png")
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(png)
        request.finish()

    def fail(failure: Failure) -> None:
        log.error("admin snapshot failed: %s", failure.getErrorMessage())
        if not gone:
            body = {"error": "could not encode the snapshot", "hint": "see thinserve's log"}
            request.write(_json(request, 500, body))
            request.finish()

    result.addCallbacks(send, fail)
    return NOT_DONE_YET


# -- who is asking ----------------------------------------------------------------------------
def peer_actor(request: server.Request) -> str:
    """ "admin:USER" for the Unix user at the other end of the socket.

    Only thinserve's own user and root are let in (the socket's mode says the
    same; this holds even if someone loosens it).
    """
    handle = request.channel.transport.getHandle()  # type: ignore[union-attr]
    try:
        creds = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        raise ApiError(403, "the admin API answers only on its Unix socket", "") from None
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        raise ApiError(403, f"uid {uid} may not administer thinserve", _PERMISSION_HINT)
    try:
        return "admin:" + pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"admin:uid-{uid}"


_PERMISSION_HINT = "run as the user running thinserve, or as root"


class AdminSite(server.Site):
    """The API's site: bounded requests, its own quiet access log."""

    noisy = False

    def __init__(self, api: AdminAPI) -> None:
        super().__init__(
            AdminResource(api),
            requestFactory=BoundedRequest,
            timeout=IDLE_TIMEOUT,
            parsePOSTFormSubmission=False,
        )
        self.displayTracebacks = False

    def log(self, request: server.Request) -> None:
        log.debug("admin %s %s -> %s", request.method, request.uri[:200], request.code)


# -- listening --------------------------------------------------------------------------------
class AdminSocketError(RuntimeError):
    """The admin socket cannot be created; the message says why."""


def socket_path(configured: str | None) -> Path | None:
    """Where to listen: the configured path, "" for nowhere, None for the default."""
    if configured == "":
        return None
    if configured is not None:
        return Path(configured)
    from ..backends.xvnc import runtime_dir

    return runtime_dir() / SOCKET_NAME


async def listen(reactor: object, path: Path, site: server.Site) -> IListeningPort:
    """Listen on ``path``: mode 0600, in a 0700 directory made if missing.

    A socket file left by a thinserve that died is replaced; a live one is
    not (AdminSocketError).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.parent.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "admin socket directory %s is mode %o; make it 0700 so only thinserve's user "
            "can reach the socket",
            path.parent,
            mode,
        )
    _clear_stale(path)
    endpoint = endpoints.UNIXServerEndpoint(reactor, str(path), mode=0o600, wantPID=False)
    try:
        return await endpoint.listen(site)
    except Exception as exc:
        raise AdminSocketError(f"cannot listen on {path}: {exc}") from None


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(f"{path} exists and is not a socket; move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a thinserve that is gone
        return
    except OSError as exc:
        raise AdminSocketError(f"cannot check {path}: {exc}") from None
    finally:
        probe.close()
    raise AdminSocketError(f"another thinserve answers at {path}; stop it or set admin_socket")


async def start(
    reactor: object,
    hub: Hub,
    configured: str | None,
    info: Callable[[], dict[str, Any]] | None = None,
) -> IListeningPort | None:
    """Serve the admin API for ``hub`` where ``configured`` says (see socket_path).

    With the default path, a problem is logged and thinserve runs without the
    API; a configured path must work (AdminSocketError otherwise).
    """
    try:
        path = socket_path(configured)
        if path is None:
            log.info("admin API off ([server] admin_socket is empty)")
            return None
        port = await listen(reactor, path, AdminSite(AdminAPI(hub, info)))
    except (AdminSocketError, OSError) as exc:
        if configured is not None:
            raise AdminSocketError(str(exc)) from None
        log.warning("admin API off: %s", exc)
        return None
    log.info("admin API on %s", path)
    return port
