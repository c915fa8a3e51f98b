"""Who uses which desktop, read from the broker: what the pool policies go by."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping

from ..broker import BrokerState, ScreenKind, ShowDesktop, ShowScreen

Holders = Mapping[str, Hashable] | Collection[str]  # desktop -> who holds it, or just names
WAITING_SCREENS = (ScreenKind.STARTING, ScreenKind.UNAVAILABLE, ScreenKind.FAILED)


def desktops_in_use(state: BrokerState) -> dict[str, str]:
    """desktop -> holder from a broker snapshot: what DesktopManager.start wants.

    A desktop is in use while a terminal controls it, waits for it (its
    starting or unavailable screen), or a pool lease holds it.  The holder is
    "user:NAME" for a logged-in user (their desktop follows them), else
    "terminal:ID".  Watching view-only does not count.
    """
    holders: dict[str, str] = {}
    for terminal, shown in state.shown.items():
        desktop = _desktop_of(shown)
        if desktop is not None:
            user = state.logins.get(terminal)
            holders[desktop] = f"user:{user}" if user else f"terminal:{terminal}"
    for desktop, (kind, who) in state.leases.items():
        holders[desktop] = f"{kind}:{who}"
    return holders


def as_mapping(found: Holders) -> dict[str, Hashable]:
    """desktop -> holder, from either form ``in_use`` may return."""
    if isinstance(found, Mapping):
        return dict(found)
    return {name: True for name in found}


def _desktop_of(shown: object) -> str | None:
    if isinstance(shown, ShowDesktop):
        return shown.desktop if shown.control else None
    if isinstance(shown, ShowScreen) and shown.kind in WAITING_SCREENS:
        return shown.desktop
    return None
