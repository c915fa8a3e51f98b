"""Leases: named things (a desktop, a terminal) of which exactly one node is in charge.

A lease is a row (kind, subject) -> node with an expiry.  ``acquire`` takes a
free or expired lease, or renews one the node already holds, in ONE
statement (INSERT .. ON CONFLICT .. DO UPDATE .. WHERE expired RETURNING):
when nodes race for the same lease, PostgreSQL serialises them on the row
and exactly one gets it back.  Expiry is judged by the database's clock.

A node renews what it holds on every heartbeat; a lease it could not renew
(it expired meanwhile and another node took it) is reported as lost.
"""

from __future__ import annotations

import re
import threading

from .db import NOW, Database
from .nodes import check_name

KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_SUBJECT = 255  # characters
MAX_TTL = 3600.0  # seconds

Key = tuple[str, str]  # (kind, subject)

ACQUIRE = f"""
    WITH clock AS (SELECT {NOW} AS now)
    INSERT INTO leases AS l (kind, subject, node, acquired, expires)
    SELECT %s, %s, %s, clock.now, clock.now + %s FROM clock
    ON CONFLICT (kind, subject) DO UPDATE
        SET node = excluded.node, expires = excluded.expires,
            acquired = CASE WHEN l.node = excluded.node AND l.expires > excluded.acquired
                            THEN l.acquired ELSE excluded.acquired END
        WHERE l.node = excluded.node OR l.expires <= excluded.acquired
    RETURNING l.node"""

RENEW = f"""
    WITH clock AS (SELECT {NOW} AS now)
    UPDATE leases SET expires = clock.now + %s FROM clock
    WHERE node = %s
      AND (kind, subject) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
    RETURNING kind, subject"""

HOLDER = f"SELECT node FROM leases WHERE kind = %s AND subject = %s AND expires > {NOW}"

HELD_BY = f"""
    SELECT kind, subject FROM leases WHERE node = %s AND expires > {NOW}
    ORDER BY kind, subject"""


def check_key(kind: str, subject: str) -> None:
    """ValueError unless ``kind`` and ``subject`` can name a lease."""
    if not KIND.fullmatch(kind):
        raise ValueError(f"lease kind {kind!r}: 1 to 32 of a-z, 0-9 and '-', a letter first")
    if not 0 < len(subject) <= MAX_SUBJECT:
        raise ValueError(f"lease subject of {len(subject)} characters: give 1 to {MAX_SUBJECT}")


def check_ttl(ttl: float) -> None:
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"lease time {ttl} s: give more than 0 and at most {MAX_TTL}")


class Leases:
    """The leases of node ``node``, on a connection of their own (see .db).

    ``held`` is what this node believes it holds: what it acquired and has
    not released or lost.
    """

    def __init__(self, url: str, node: str) -> None:
        self.node = check_name(node)
        self.db = Database(url)
        self.held: set[Key] = set()
        # One change of ``held`` at a time: an acquire during a renewal must not be forgotten.
        self._lock = threading.Lock()

    def acquire(self, kind: str, subject: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if it is free, expired or ours; whether we hold it."""
        check_key(kind, subject)
        check_ttl(ttl)
        with self._lock:
            won = bool(self.db.fetch(ACQUIRE, (kind, subject, self.node, ttl)))
            if won:
                self.held.add((kind, subject))
            else:
                self.held.discard((kind, subject))
            return won

    def renew_all(self, ttl: float) -> list[Key]:
        """Push every lease we hold ``ttl`` seconds on; the ones we lost, sorted."""
        check_ttl(ttl)
        with self._lock:
            if not self.held:
                return []
            kinds, subjects = zip(*sorted(self.held), strict=True)
            rows = self.db.fetch(RENEW, (ttl, self.node, list(kinds), list(subjects)))
            renewed = {(str(k), str(s)) for k, s in rows}
            lost = sorted(self.held - renewed)
            self.held = renewed
            return lost

    def forget_all(self) -> list[Key]:
        """Count every lease as lost without asking the database (it cannot be reached,
        and they may have expired by now); what was held, sorted."""
        with self._lock:
            lost, self.held = sorted(self.held), set()
            return lost

    def release(self, kind: str, subject: str) -> None:
        """Give the lease up (if we hold it)."""
        with self._lock:
            self.db.fetch(
                "DELETE FROM leases WHERE kind = %s AND subject = %s AND node = %s",
                (kind, subject, self.node),
            )
            self.held.discard((kind, subject))

    def release_all(self) -> None:
        """Give up every lease this node holds, including ones from an earlier run."""
        with self._lock:
            self.db.fetch("DELETE FROM leases WHERE node = %s", (self.node,))
            self.held.clear()

    def holder(self, kind: str, subject: str) -> str | None:
        """The node holding this lease now, None when it is free or expired."""
        rows = self.db.fetch(HOLDER, (kind, subject))
        return str(rows[0][0]) if rows else None

    def held_by(self, node: str) -> list[Key]:
        """The unexpired leases ``node`` holds."""
        return [(str(k), str(s)) for k, s in self.db.fetch(HELD_BY, (node,))]

    def close(self) -> None:
        self.db.close()
