"""What the admin API shows: terminals, desktops and users as JSON-ready
dicts, from the broker's live state, the store and the live sessions."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from ..broker import Assignment, BrokerState, DesktopState, ShowDesktop, ShowScreen
from ..hub import Hub
from ..relay.session import TerminalSession
from ..relay.upstream import Mirror, MirrorFeed
from ..store.base import Desktop as DesktopRecord
from ..store.base import Store
from ..store.base import Terminal as TerminalRecord
from ..terminal_ids import kind_of


class Picture:
    """The broker's live state with the store's pairings and owners, read once."""

    def __init__(self, state: BrokerState, store: Store) -> None:
        self.state = state
        pairings = store.list_pairings()
        self.paired = {p.terminal_id: p.desktop for p in pairings}
        self.paired_desktops = {p.desktop: p.terminal_id for p in pairings}
        self.owners = {u.desktop: u.name for u in store.list_users() if u.desktop}


class Views:
    """Rows for the hub's terminals, desktops and users."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.store: Store = hub.broker.store

    def picture(self) -> Picture:
        return Picture(self.broker.snapshot(), self.store)

    def terminal(self, record: TerminalRecord, view: Picture) -> dict[str, Any]:
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
            "shows": shows(shown),
            "pairing_code": shown.code if isinstance(shown, ShowScreen) else None,
            "paired_desktop": view.paired.get(record.id),
            "user": view.state.logins.get(record.id),
            "watching": view.state.watchers.get(record.id),
            "session": _session_view(live.session) if live is not None else None,
        }

    def desktop(self, desktop: DesktopRecord, view: Picture) -> dict[str, Any]:
        mirror = self.hub.mirrors.get(desktop.name)
        controllers, watchers = _viewers(view.state.shown, desktop.name)
        controller = controllers[0] if controllers else None
        state = view.state.desktops.get(desktop.name)
        feed = mirror.feed if mirror is not None else None
        live = feed is not None and feed.live
        holder = view.state.leases.get(desktop.name)
        return {
            "name": desktop.name,
            "backend": desktop.backend,
            "pool": desktop.pool,
            "configured": mirror is not None,
            "state": state_word(state) if state is not None else None,
            "mirror": _link(mirror) if mirror is not None else None,
            "detail": _detail(feed, self.hub.desktop_details.get(desktop.name, "")),
            "size": _size(mirror.width, mirror.height) if live and mirror is not None else None,
            "controlled_by": controller,
            "controlling_user": view.state.logins.get(controller) if controller else None,
            "watchers": watchers,
            "paired_terminal": view.paired_desktops.get(desktop.name),
            "owner": view.owners.get(desktop.name),
            "lease": ":".join(holder) if holder is not None else None,
        }

    def users(self) -> list[dict[str, Any]]:
        at = {user: terminal for terminal, user in self.broker.snapshot().logins.items()}
        return [
            {
                "name": u.name,
                "desktop": u.desktop,
                "created": u.created,
                "disabled": u.disabled,
                "logged_in_at": at.get(u.name),
            }
            for u in self.store.list_users()
        ]


def state_word(state: DesktopState) -> str:
    """A desktop's state as the admin sees it: the state machine's words, but
    "failed" for crashed (it could not start, or it crashed; ``detail`` says why)."""
    return "failed" if state is DesktopState.CRASHED else state.value


def shows(assignment: Assignment | None) -> dict[str, Any] | None:
    """What a terminal is shown: a desktop (with or without control) or a screen."""
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
    now = session.clock.seconds()
    return {
        "width": session.width,
        "height": session.height,
        "bytes_sent": session.bytes_sent,
        "updates_sent": session.updates_sent,
        "connected_for": round(now - session.connected_at, 1),
        "idle_for": round(now - session.last_input, 1),
    }


def _size(width: int, height: int) -> dict[str, int] | None:
    return {"width": int(width), "height": int(height)} if width and height else None


def encode_png(frame: np.ndarray) -> bytes:
    """A 0x00RRGGBB frame as PNG bytes (vectorised channel split, then zlib)."""
    shifts = np.array([16, 8, 0], dtype=np.uint32)
    rgb = ((frame[..., None] >> shifts) & 0xFF).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG", compress_level=3)
    return out.getvalue()


def _link(mirror: Mirror) -> str:
    """The mirror's link to its desktop's console: live, connecting, or down (none)."""
    if mirror.feed is None:
        return "down"
    return "live" if mirror.feed.live else "connecting"


def _detail(feed: MirrorFeed | None, manager_says: str) -> str:
    """Why the desktop is not on its mirror: the link's reason while it
    reconnects, else the manager's (a failed start, a crash, a full pool)."""
    if feed is not None and not feed.live:
        return feed.why
    return manager_says if feed is None else ""
