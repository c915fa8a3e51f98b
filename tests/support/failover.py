"""Helpers for failover tests: killing a node the hard way, and timing recovery."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from .nodes import Node


def kill_node(node: Node) -> float:
    """SIGKILL the node's whole process group (no clean leave: its leases stay until
    they expire); returns time.monotonic() of the kill."""
    killed = time.monotonic()
    os.killpg(node.proc.pid, signal.SIGKILL)
    node.proc.popen.wait(10)
    return killed


@dataclass
class Stopwatch:
    """Named moments after a start, for the recovery report."""

    start: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> float:
        self.marks[what] = time.monotonic() - self.start
        return self.marks[what]

    def report(self) -> str:
        return ", ".join(f"{what} after {at:.2f} s" for what, at in self.marks.items())


def lease_holder(database: str, kind: str, subject: str) -> str | None:
    """The node holding the lease (kind, subject) now, read from the database itself."""
    import psycopg

    query = (
        "SELECT node FROM leases WHERE kind = %s AND subject = %s "
        "AND expires > extract(epoch from clock_timestamp())"
    )
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(query, (kind, subject)).fetchone()
    return None if row is None else str(row[0])
