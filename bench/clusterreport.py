"""Printing the cluster benchmark: latency per crowd size and database, and the
database's work per 100 terminals."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .cluster import CrowdRun, DatabaseWork
from .fanout import quantile_ms
from .fanoutreport import _number
from .options import ClusterOptions
from .relayreport import markdown

LIMIT_MS = 100.0  # the p99 a node must stay under

COLUMNS = (
    "terminals",
    "database",
    "p50 ms",
    "p99 ms",
    "missed",
    "thinserve CPU %",
    "statements/s per 100 terminals (watching)",
    "rows written/s per 100 terminals (watching)",
    "statements per terminal connecting",
    "rows written per terminal connecting",
)


def _pooled(runs: Sequence[CrowdRun], quantile: float) -> str:
    pooled = quantile_ms(tuple(x for r in runs for x in r.run.latencies), quantile)
    each = [r.run.latency_ms(quantile) for r in runs]
    text = _number(pooled)
    return text if len(each) < 2 else f"{text} ({_number(min(each))}-{_number(max(each))})"


def _rate(runs: Sequence[CrowdRun], count: int, rows: bool) -> str:
    works = [r.watching for r in runs if r.watching is not None]
    if not works:
        return "-"
    return _number(statistics.median(_per_second(w, rows) * 100.0 / count for w in works), 2)


def _per_second(work: DatabaseWork, rows: bool) -> float:
    return (work.rows if rows else work.statements) / max(work.seconds, 1e-9)


def _each(runs: Sequence[CrowdRun], count: int, rows: bool) -> str:
    works = [r.connecting for r in runs if r.connecting is not None]
    if not works:
        return "-"
    return _number(statistics.median((w.rows if rows else w.statements) / count for w in works))


def _row(count: int, database: str, runs: Sequence[CrowdRun]) -> list[str]:
    return [
        str(count),
        database,
        _pooled(runs, 0.5),
        _pooled(runs, 0.99),
        str(sum(r.run.missed for r in runs)),
        _number(statistics.median(r.run.share(r.run.thinserve_cpu) * 100.0 for r in runs)),
        _rate(runs, count, rows=False),
        _rate(runs, count, rows=True),
        _each(runs, count, rows=False),
        _each(runs, count, rows=True),
    ]


def carried(options: ClusterOptions, runs: Sequence[CrowdRun]) -> str:
    """The largest crowd whose p99 on PostgreSQL stayed under LIMIT_MS."""
    good = [
        count
        for count in options.crowds
        if (pg := [r for r in runs if r.run.terminals == count and r.database == "PostgreSQL"])
        and quantile_ms(tuple(x for r in pg for x in r.run.latencies), 0.99) < LIMIT_MS
    ]
    if not good:
        return f"no crowd measured stayed under p99 {LIMIT_MS:.0f} ms"
    return (
        f"{max(good)} terminals per node measured at p99 < {LIMIT_MS:.0f} ms "
        f"(the largest crowd measured: {max(options.crowds)})"
    )


def render(
    options: ClusterOptions, runs: Sequence[CrowdRun], machine: list[str], where: str
) -> list[str]:
    out = ["", "## thinserve cluster benchmark: one node on a remote PostgreSQL", ""]
    out += [f"- {line}" for line in machine]
    out.append(f"- {where}")
    out.append(
        f"- {options.desktops} desktops of {options.size[0]}x{options.size[1]}, "
        f"{options.rate:.0f} changes/s on each, replays of {options.seconds:.0f} s, "
        f"{options.rounds} round(s) per crowd and database, the databases alternating; "
        "latency pooled over the rounds, (min-max) of single rounds"
    )
    rows = []
    for count in options.crowds:
        for database in ("PostgreSQL", "SQLite"):
            chosen = [r for r in runs if r.run.terminals == count and r.database == database]
            if chosen:
                rows.append(_row(count, database, chosen))
    out += ["", *markdown(COLUMNS, rows)]
    out += ["", f"- {carried(options, runs)}"]
    return out
