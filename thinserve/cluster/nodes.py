"""The table of nodes: who is part of the site, and who is still alive.

A node joins with its name and address, heartbeats every few seconds (which
pushes its expiry forward and records how many terminals and desktops it
serves) and leaves when it stops.  A node whose expiry has passed by the
DATABASE clock is gone; its name may then be taken again.

Two live processes never share a name: joining under a name whose row has
not expired is refused.  A node's row is told apart from a later one of the
same name by ``started`` (the database time it joined), so a node that was
presumed gone and replaced cannot overwrite its successor.
"""

from __future__ import annotations

import re
import socket
from dataclasses import asdict, dataclass
from typing import Any

from .db import NOW, ClusterError, Database

NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = "1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
MAX_ADDRESS = 255  # characters of a node's address
DEFAULT_HEARTBEAT = 2.0  # seconds between a node's heartbeats
DEFAULT_EXPIRY = 10.0  # seconds a node stays alive after its last heartbeat
MAX_EXPIRY = 3600.0


class NodeNameInUse(ClusterError):
    """Another live node has this name.  ``silent``: seconds since its last
    heartbeat; ``left``: seconds until its row expires (by the database clock)."""

    def __init__(self, message: str, silent: float = 0.0, left: float = 0.0) -> None:
        super().__init__(message)
        self.silent = silent
        self.left = left


@dataclass(frozen=True)
class NodeInfo:
    """One row of the nodes table, judged at the database's time ``now``."""

    name: str
    address: str
    started: float
    heartbeat: float
    expires: float
    terminals: int
    desktops: int
    version: str
    alive: bool
    age: float  # seconds since the last heartbeat, by the database clock
    leases: int  # unexpired leases the node holds

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: str) -> str:
    """``name`` if it is a valid node name; ValueError saying the rule otherwise."""
    if not NAME.fullmatch(name):
        raise ValueError(f"node name {name!r} is not valid: use {NAME_RULE}")
    return name


def default_name(hostname: str | None = None) -> str:
    """This machine's short host name made a valid node name ("node" if nothing is left)."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    name = re.sub(r"[^a-z0-9-]+", "-", host.lower())[:63].strip("-")
    return name or "node"


LIST_NODES = f"""
    WITH clock AS (SELECT {NOW} AS now)
    SELECT n.name, n.address, n.started, n.heartbeat, n.expires, n.terminals,
           n.desktops, n.version, n.expires > clock.now, clock.now - n.heartbeat,
           (SELECT count(*) FROM leases l WHERE l.node = n.name AND l.expires > clock.now)
    FROM nodes n, clock ORDER BY n.name"""

JOIN = f"""
    WITH clock AS (SELECT {NOW} AS now)
    INSERT INTO nodes AS n (name, address, started, heartbeat, expires, terminals,
                            desktops, version, fingerprint)
    SELECT %s, %s, clock.now, clock.now, clock.now + %s, 0, 0, %s, %s FROM clock
    ON CONFLICT (name) DO UPDATE
        SET address = excluded.address, started = excluded.started,
            heartbeat = excluded.heartbeat, expires = excluded.expires,
            terminals = 0, desktops = 0, version = excluded.version,
            fingerprint = excluded.fingerprint
        WHERE n.expires <= excluded.started
    RETURNING n.started"""

HEARTBEAT = f"""
    WITH clock AS (SELECT {NOW} AS now)
    UPDATE nodes SET heartbeat = clock.now, expires = clock.now + %s,
                     terminals = %s, desktops = %s, address = %s, fingerprint = %s
    FROM clock WHERE name = %s AND started = %s
    RETURNING name"""

HOLDER = f"""
    SELECT address, {NOW} - heartbeat, expires - {NOW} FROM nodes WHERE name = %s"""


def list_nodes(db: Database) -> list[NodeInfo]:
    """Every node in the table, alive or gone, by name."""
    return [NodeInfo(*row) for row in db.fetch(LIST_NODES)]


FORGET = f"DELETE FROM nodes WHERE name = %s AND expires <= {NOW} RETURNING name"


def forget_node(db: Database, name: str) -> bool:
    """Remove a gone node's row (its record); False when no gone node has that name.
    A live node is never removed: judged by the database clock, in the same statement."""
    check_name(name)
    return bool(db.fetch(FORGET, (name,)))


class NodeRegistry:
    """This node's row in the nodes table.

    Each call is one statement on a connection of its own (see .db); calls
    block for at most the statement timeout, so a server runs them in a
    thread.
    """

    def __init__(
        self,
        url: str,
        name: str,
        address: str = "",
        expiry: float = DEFAULT_EXPIRY,
        version: str = "",
    ) -> None:
        self.name = check_name(name)
        if len(address) > MAX_ADDRESS:
            raise ValueError(f"node address of {len(address)} characters; at most {MAX_ADDRESS}")
        if not 0 < expiry <= MAX_EXPIRY:
            raise ValueError(f"node expiry {expiry} s: give more than 0 and at most {MAX_EXPIRY}")
        self.address = address
        # The node link's certificate key (cluster/link.py), once it listens; the
        # address is then host:port of the link.  Both go out with each heartbeat.
        self.fingerprint = ""
        self.expiry = expiry
        self.version = version
        self.db = Database(url)
        self.started: float | None = None  # the database time of our join

    def join(self) -> None:
        """Enter the table; NodeNameInUse when a live node has our name."""
        params = (self.name, self.address, self.expiry, self.version, self.fingerprint)
        rows = self.db.fetch(JOIN, params)
        if not rows:
            raise self._in_use()
        self.started = float(rows[0][0])

    def heartbeat(self, terminals: int = 0, desktops: int = 0) -> None:
        """Stay alive another ``expiry`` seconds; join again if our row is gone.

        Our row disappears when an administrator removed it, or when we were
        silent too long and it was taken over; then we join again, which
        raises NodeNameInUse if another live node now has our name.
        """
        if self.started is not None and self.db.fetch(HEARTBEAT, self._beat(terminals, desktops)):
            return
        self.join()
        self.db.fetch(HEARTBEAT, self._beat(terminals, desktops))

    def _beat(self, terminals: int, desktops: int) -> tuple[object, ...]:
        where = (self.address, self.fingerprint, self.name, self.started)
        return (self.expiry, terminals, desktops, *where)

    def leave(self) -> None:
        """Remove our row (only ours: not a successor's of the same name)."""
        if self.started is not None:
            self.db.fetch(
                "DELETE FROM nodes WHERE name = %s AND started = %s", (self.name, self.started)
            )
            self.started = None

    def list_nodes(self) -> list[NodeInfo]:
        return list_nodes(self.db)

    def close(self) -> None:
        self.db.close()

    def _in_use(self) -> NodeNameInUse:
        rows = self.db.fetch(HOLDER, (self.name,))
        address, age, left = rows[0] if rows else ("", 0.0, 0.0)
        at = f" at {address}" if address else ""
        return NodeNameInUse(
            f"node name {self.name!r} is in use by a live node{at} (last heartbeat "
            f"{age:.1f} s ago); give this node another [cluster] node_name, or, if that "
            f"node has stopped, wait {max(left, 0):.0f} s until it expires",
            silent=float(age),
            left=max(float(left), 0.0),
        )
