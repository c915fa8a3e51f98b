"""Which node runs which desktop: a desktop lease per desktop.

Each desktop of a site has one owning node, the one holding its console
link, so two nodes never start, stop or reset the same desktop.  At start a
node claims a lease (kind ``desktop``) for every desktop it is configured
with; a desktop whose lease another live node holds is let go here, untouched
(``DesktopManager.let_go``): that node runs it, and takeover.py keeps it
dormant here if this node could take it over.  The heartbeats renew the
leases; a lease lost (the database was out of reach for longer than a lease)
means another node may run the desktop by now, so this node lets it go too
(SiteNode.lost) and its terminals are told it is unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from twisted.internet import defer

from .leases import Key

log = logging.getLogger(__name__)

DESKTOP = "desktop"


class Claims(Protocol):
    def acquire(self, kind: str, subject: str) -> defer.Deferred[bool]: ...

    def holder(self, kind: str, subject: str) -> defer.Deferred[str | None]: ...


async def claim_desktops(claims: Claims, names: Iterable[str]) -> dict[str, str]:
    """Take each desktop's lease; returns the desktops held elsewhere, with their node."""
    elsewhere: dict[str, str] = {}
    for name in sorted(names):
        if await claims.acquire(DESKTOP, name):
            continue
        holder = await claims.holder(DESKTOP, name)
        elsewhere[name] = holder or "another node"
        log.warning(
            "desktop %s is run by node %s: this node leaves it alone "
            "(configure each desktop on one node)",
            name,
            elsewhere[name],
        )
    return elsewhere


def lost_desktops(lost: Iterable[Key]) -> list[str]:
    """The desktops among lost leases."""
    return sorted(subject for kind, subject in lost if kind == DESKTOP)
