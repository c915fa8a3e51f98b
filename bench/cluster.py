"""A node of a site on a remote PostgreSQL: how many terminals it carries, and
what the database carries.

Runs inside a network namespace of its own (``bench/clusterlan.py`` makes it):
the PostgreSQL server lives in another namespace on a private Ethernet LAN
(veth and a bridge: a real network hop, with no added delay, as this kernel
has no netem), the node, its Xvnc desktops and the terminals on this
namespace's loopback.

For each crowd size N, N terminals on ``desktops`` desktops, every desktop
typing and ticking (the fan-out benchmark's crowd, ``bench/fanout.py``),
measured through a node on the remote PostgreSQL and, interleaved, through
the same node on a local SQLite file: update latency p50/p99 from the
desktop having the pixels to the terminal having decoded them, the node's
CPU, and the database's work counted by ``pg_stat_statements``: statements
and rows written per second while the terminals watch, and per terminal
while they connect.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .fanout import FanoutRun, Stage, quiet
from .options import ClusterOptions
from .terminal import MeasuringTerminal

Progress = Callable[[str], None]
WRITES = r"\m(insert\s+into|delete\s+from|update\s+\w+(\s+as\s+\w+)?\s+set)\M"


@dataclass(frozen=True)
class DatabaseWork:
    """Statements run and rows written over a stretch of time."""

    statements: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class CrowdRun:
    database: str  # "PostgreSQL" or "SQLite"
    run: FanoutRun
    connecting: DatabaseWork | None  # None on SQLite
    watching: DatabaseWork | None


class Counters:
    """What pg_stat_statements counted for one database, read from the server's
    own database (``admin_url``) so that reading does not count."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url = admin_url
        self.name = name

    def read(self) -> tuple[int, int]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(s.calls), 0),"
                " coalesce(sum(s.rows) FILTER (WHERE s.query ~* %s), 0)"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s",
                (WRITES, self.name),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


class CountedStage(Stage):
    """The fan-out stage, reading the database's counters around the connecting."""

    def __init__(self, options: ClusterOptions, database: str, counters: Counters | None) -> None:
        cluster = '\n[cluster]\nnode_name = "bench-node"\n' if counters else ""
        super().__init__(
            options.desktops, options.size, options.seconds, options.rate, database, cluster
        )
        self.counters = counters
        self.marks: list[tuple[float, tuple[int, int]]] = []

    def mark(self) -> None:
        if self.counters is not None:
            from twisted.internet import reactor

            self.marks.append((reactor.seconds(), self.counters.read()))

    def replayed(self) -> None:
        self.mark()

    async def connect(self, count: int) -> list[tuple[MeasuringTerminal, str]]:
        self.marks = []
        self.mark()
        pairs = await super().connect(count)
        self.mark()
        return pairs


def _work(
    before: tuple[float, tuple[int, int]], after: tuple[float, tuple[int, int]]
) -> DatabaseWork:
    (t0, (x0, r0)), (t1, (x1, r1)) = before, after
    return DatabaseWork(x1 - x0, r1 - r0, t1 - t0)


async def one_crowd(
    options: ClusterOptions,
    count: int,
    database: str,
    counters: Counters | None,
    progress: Progress,
) -> CrowdRun:
    stage = CountedStage(options, database, counters)
    label = "PostgreSQL" if counters else "SQLite"
    try:
        stage.start()
        await stage.start_thinserve()
        assert stage.server is not None
        progress(f"[cluster] {count} terminals on {options.desktops} desktops, {label}")
        run = await stage.measure("thinserve", count)
        await quiet([stage.server.pid, *stage.xvnc_pids])
    finally:
        stage.stop()
    connecting = watching = None
    if counters is not None and len(stage.marks) == 3:
        connecting = _work(stage.marks[0], stage.marks[1])
        watching = _work(stage.marks[1], stage.marks[2])
    progress(
        f"[cluster] {label}: p50 {run.latency_ms(0.5):.1f} ms, p99 {run.latency_ms(0.99):.1f} ms"
    )
    return CrowdRun(label, run, connecting, watching)


def new_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def run(options: ClusterOptions, admin_url: str, progress: Progress) -> list[CrowdRun]:
    """Every crowd size on both databases, the order alternating round by round."""
    runs: list[CrowdRun] = []
    folder = Path(tempfile.mkdtemp(prefix="thinserve-cluster-"))
    number = 0
    for round_number in range(options.rounds):
        for count in options.crowds:
            order = ("pg", "sqlite") if round_number % 2 == 0 else ("sqlite", "pg")
            for kind in order:
                number += 1
                if kind == "pg":
                    name = f"bench_{number}"
                    url = new_database(admin_url, name)
                    counters = Counters(admin_url, name)
                    runs.append(await one_crowd(options, count, url, counters, progress))
                else:
                    path = f"sqlite:///{folder / f'bench-{number}.db'}"
                    runs.append(await one_crowd(options, count, path, None, progress))
    return runs
