"""Control leases: which terminal of which node may control a desktop, site-wide.

The broker's ``SiteClaims`` (thinserve/broker/claims.py) over the ``leases``
table: kind ``control``, subject the desktop, node this node, holder the
terminal.  ``acquire`` is ONE statement (INSERT .. ON CONFLICT .. DO UPDATE
.. WHERE ours or expired), so of two nodes racing for a desktop exactly one
gets it; expiry is judged by the database's clock.  Taking and giving up a
lease sends ``lease:<desktop>`` in the same statement, so the other nodes
decide again once it is committed.

What this node holds is kept in memory and renewed by the node's heartbeat
(``renew_all``, from ClusterService's thread).  A lease counts as held only
until ``margin`` seconds before it could have expired since its last
renewal began, so a node whose heartbeats stall stops granting control
before another node can take the lease.  What other nodes hold is read in
one statement when the broker asks and what was known is out of date (a
notification came, an acquire lost, one of those leases may have expired).

The broker calls in from the reactor thread, the heartbeat from a worker
thread; each has its own connection (see .db: connect and statement
timeouts of 5 s), so a renewal never makes the reactor wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..store.changes import CHANNEL
from .db import NOW, ClusterDatabaseError, Database
from .leases import Key, check_key, check_ttl
from .nodes import check_name

log = logging.getLogger(__name__)

CONTROL = "control"
RETRY = 1.0  # seconds to wait before asking the database again after it failed

ACQUIRE = f"""
    WITH clock AS (SELECT {NOW} AS now)
    INSERT INTO leases AS l (kind, subject, node, holder, acquired, expires)
    SELECT '{CONTROL}', %s, %s, %s, clock.now, clock.now + %s FROM clock
    ON CONFLICT (kind, subject) DO UPDATE
        SET node = excluded.node, holder = excluded.holder, expires = excluded.expires,
            acquired = CASE WHEN l.node = excluded.node AND l.expires > excluded.acquired
                            THEN l.acquired ELSE excluded.acquired END
        WHERE l.node = excluded.node OR l.expires <= excluded.acquired
    RETURNING pg_notify(%s, 'lease:' || l.subject)"""

RELEASE = f"""
    DELETE FROM leases WHERE kind = '{CONTROL}' AND subject = %s AND node = %s
    RETURNING pg_notify(%s, 'lease:' || subject)"""

RENEW = f"""
    WITH clock AS (SELECT {NOW} AS now)
    UPDATE leases SET expires = clock.now + %s FROM clock
    WHERE kind = '{CONTROL}' AND node = %s AND subject = ANY(%s::text[])
    RETURNING subject"""

OTHERS = f"""
    WITH clock AS (SELECT {NOW} AS now)
    SELECT subject, expires - clock.now FROM leases, clock
    WHERE kind = '{CONTROL}' AND node <> %s AND expires > clock.now"""


@dataclass
class _Held:
    holder: str  # the terminal
    valid_until: float  # time.monotonic() until which the lease counts as ours
    since: float  # time.monotonic() when it was last acquired


class ControlClaims:
    """The control leases of node ``node`` (see the module's docstring).

    ``ttl``: seconds a lease lasts unless renewed (the cluster's ``lease``).
    ``margin``: how much sooner than that a lease not renewed stops counting
    here: at least the time the broker may take to act on it (the hub
    decides again every few seconds).  ``allowed``: False while another
    live process has this node's name (its leases would look like ours).
    """

    def __init__(
        self,
        url: str,
        node: str,
        ttl: float,
        margin: float = 5.0,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        check_ttl(ttl)
        self._node = check_name(node)
        self.ttl = ttl
        self.margin = margin
        self.allowed = allowed
        self.db = Database(url)  # the broker's calls, on the reactor thread
        self.renewals = Database(url)  # the heartbeat's, in a worker thread
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()  # guards _held: the heartbeat renews from its thread
        self._others: dict[str, float] = {}  # desktop -> monotonic time its lease may end
        self._known_until = 0.0  # when _others must be read again
        self._in_doubt = False  # the last read failed

    @property
    def node(self) -> str:
        return self._node

    # -- the broker's calls (reactor thread) ------------------------------------------------
    def acquire(self, desktop: str, holder: str) -> bool:
        check_key(CONTROL, desktop)
        if not self.allowed():
            return False
        began = time.monotonic()
        try:
            won = bool(self.db.fetch(ACQUIRE, (desktop, self._node, holder, self.ttl, CHANNEL)))
        except ClusterDatabaseError as exc:
            log.warning("control of desktop %s not taken: %s", desktop, exc)
            won = False
        with self._lock:
            if won:
                self._held[desktop] = _Held(holder, began + self._valid_for(self.ttl), began)
            else:
                self._held.pop(desktop, None)
        if won:
            self._others.pop(desktop, None)
        else:
            self._known_until = 0.0  # someone else has it: learn who else has what
        return won

    def release(self, desktop: str) -> None:
        with self._lock:
            self._held.pop(desktop, None)
        try:
            self.db.fetch(RELEASE, (desktop, self._node, CHANNEL))
        except ClusterDatabaseError as exc:
            log.warning(
                "control of desktop %s not given up (it expires by itself): %s", desktop, exc
            )

    def held(self) -> dict[str, str]:
        """What this node holds; a lease not renewed in time is dropped here (it
        expires in the database within ``margin`` seconds, unless acquired again)."""
        now = time.monotonic()
        with self._lock:
            for desktop in [d for d, h in self._held.items() if h.valid_until <= now]:
                log.warning("control of desktop %s was not renewed in time: given up", desktop)
                del self._held[desktop]
            return {d: h.holder for d, h in self._held.items()}

    def elsewhere(self, desktop: str) -> bool:
        now = time.monotonic()
        if now >= self._known_until:
            self._read_others(now)
        if self._in_doubt:
            return True  # the database cannot say: never grant in doubt
        until = self._others.get(desktop)
        return until is not None and until > now

    def stale(self) -> None:
        self._known_until = 0.0

    def _valid_for(self, ttl: float) -> float:
        """How long after a renewal began a lease counts as held here."""
        return max(ttl - self.margin, ttl / 2)

    def _read_others(self, now: float) -> None:
        try:
            rows = self.db.fetch(OTHERS, (self._node,))
        except ClusterDatabaseError as exc:
            log.warning("cannot read which desktops other nodes control: %s", exc)
            self._in_doubt = True
            self._known_until = now + RETRY
            return
        self._in_doubt = False
        self._others = {str(d): now + float(left) for d, left in rows}
        self._known_until = min([now + self.ttl, *self._others.values()])

    # -- the heartbeat's calls (a worker thread) ---------------------------------------------
    def renew_all(self, ttl: float) -> list[Key]:
        """Push every lease held ``ttl`` seconds on; the ones lost, sorted."""
        check_ttl(ttl)
        began = time.monotonic()
        with self._lock:
            desktops = sorted(self._held)
        if not desktops:
            return []
        rows = self.renewals.fetch(RENEW, (ttl, self._node, desktops))
        renewed = {str(row[0]) for row in rows}
        valid_for = self._valid_for(ttl)
        lost = []
        with self._lock:
            for desktop in desktops:
                held = self._held.get(desktop)
                if held is None or held.since > began:
                    continue  # released, or taken again while this renewal ran
                if desktop in renewed:
                    held.valid_until = began + valid_for
                else:
                    del self._held[desktop]
                    lost.append((CONTROL, desktop))
        return lost

    def forget_all(self) -> list[Key]:
        """Count every lease as lost without asking the database (it cannot be
        reached, and they may have expired by now); what was held, sorted."""
        with self._lock:
            lost, self._held = sorted(self._held), {}
        return [(CONTROL, desktop) for desktop in lost]

    def close(self) -> None:
        self.db.close()
        self.renewals.close()
