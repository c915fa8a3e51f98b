"""Site claims: which node may give control of a desktop, when nodes share one.

One node's broker keeps control of each desktop with one of its terminals,
in memory.  Once several nodes share a database, a desktop can be shown at
more than one of them (a node relays what another runs), and two brokers
could each give control of it to a terminal of their own: a pool desktop
lent twice, a user logged in at two nodes.  So a broker with claims gives
control of a desktop only while its node holds the desktop's *control
lease*, site-wide, for that terminal; a desktop whose lease another node
holds is shown as in use.

The broker is synchronous, so are these calls.  It calls them only when what
it grants changes; what this node holds is kept in memory and renewed by the
node's heartbeat.  ``thinserve.cluster.claims.ControlClaims`` implements this
over the ``leases`` table of PostgreSQL.  On one node (SQLite) the broker has
no claims and decides alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class SiteClaims(Protocol):
    """Control leases of desktops for the terminals of one node."""

    @property
    def node(self) -> str:
        """This node's name (also written with its users' logins)."""
        ...

    def acquire(self, desktop: str, holder: str) -> bool:
        """Take the control lease of ``desktop`` for terminal ``holder`` of this
        node, or move it to ``holder`` when this node holds it already; whether
        it is held now.  False also when the database cannot say (never grant
        in doubt)."""
        ...

    def release(self, desktop: str) -> None:
        """Give up the control lease of ``desktop``, if this node holds it."""
        ...

    def held(self) -> Mapping[str, str]:
        """desktop -> terminal of the leases this node holds, from memory.  A lease
        the heartbeat could not renew is gone from here."""
        ...

    def elsewhere(self, desktop: str) -> bool:
        """Whether another node holds the control lease of ``desktop``, from what
        is known (read again, in one statement, once that is out of date)."""
        ...

    def stale(self) -> None:
        """What is known about other nodes' leases is out of date (another node
        said it changed something)."""
        ...
