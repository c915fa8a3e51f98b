"""Printing the cluster benchmark's node tables: the node relay's cost next to a
local path, and the recovery after a node is killed."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .clusternodes import DEFAULT_TIMINGS, SHORT_TIMINGS
from .clusterrecovery import CASES, SIZE, Recovery
from .clusterrelay import RelayRun
from .fanout import quantile_ms
from .fanoutreport import _number
from .options import ClusterOptions
from .relayreport import markdown

RELAY_COLUMNS = ("path", "terminals", "p50 ms", "p99 ms", "missed", "its node's CPU %")
RECOVERY_COLUMNS = ("case", "timings", "kills", "picture back after, s")
NODES = {"local": "A", "relayed": "B"}
PATH_NAMES = {
    "local": "local: at node A, which runs the desktop",
    "relayed": "relayed: at node B, through its node link from A",
}


def _pooled(runs: Sequence[RelayRun], path: str, quantile: float) -> str:
    pooled = quantile_ms(tuple(x for r in runs for x in r.latencies[path]), quantile)
    each = [r.latency_ms(path, quantile) for r in runs]
    text = _number(pooled)
    return text if len(each) < 2 else f"{text} ({_number(min(each))}-{_number(max(each))})"


def _difference(runs: Sequence[RelayRun], quantile: float) -> str:
    def pooled(path: str) -> float:
        return quantile_ms(tuple(x for r in runs for x in r.latencies[path]), quantile)

    text = f"{pooled('relayed') - pooled('local'):+.1f}"
    if len(runs) < 2:
        return text
    each = [r.latency_ms("relayed", quantile) - r.latency_ms("local", quantile) for r in runs]
    return f"{text} ({min(each):+.1f} to {max(each):+.1f})"


def _cpu(runs: Sequence[RelayRun], node: str) -> str:
    return _number(statistics.median(r.share(r.node_cpu[node]) * 100.0 for r in runs))


def relay_section(options: ClusterOptions, runs: Sequence[RelayRun], where: str) -> list[str]:
    out = ["", "### Node relay cost: a desktop relayed from another node next to a local one", ""]
    out.append(f"- {where}")
    width, height = options.relay_size
    out.append(
        f"- One desktop of {width}x{height} run by node A, {options.relay_rate:.0f} changes/s, "
        f"replays of {options.relay_seconds:.0f} s; {options.relay_terminals} view-only "
        "terminals at each node at the same time (security type None; the node link is "
        f"TLS); {len(runs)} round(s), latency pooled over the rounds, (min-max) of single "
        "rounds; both nodes and Xvnc on core 0"
    )
    rows = [
        [
            PATH_NAMES[path],
            str(options.relay_terminals),
            _pooled(runs, path, 0.5),
            _pooled(runs, path, 0.99),
            str(sum(r.missed[path] for r in runs)),
            _cpu(runs, NODES[path]),
        ]
        for path in NODES
    ]
    rows.append(["relayed - local", "", _difference(runs, 0.5), _difference(runs, 0.99), "", ""])
    return [*out, "", *markdown(RELAY_COLUMNS, rows)]


def recovery_section(options: ClusterOptions, results: Sequence[Recovery], where: str) -> list[str]:
    out = ["", "### Recovery after a node is SIGKILLed: the software terminal", ""]
    out.append(f"- {where}")
    out.append(
        f"- The software terminal (a real process, headless, recording frames) with both "
        f"nodes as servers, one desktop of {SIZE[0]}x{SIZE[1]}; from the SIGKILL to the "
        "first recorded frame equal, pixel for pixel, to a picture drawn after the kill; "
        f"median (min-max) of {options.recovery_rounds} kill(s) per row, a fresh database "
        "and fresh nodes for each"
    )
    rows = []
    for case, label in CASES.items():
        for timings in (DEFAULT_TIMINGS, SHORT_TIMINGS):
            chosen = [r.seconds for r in results if r.case == case and r.timings == timings]
            if chosen:
                rows.append([label, timings.label, str(len(chosen)), _spread(chosen)])
    return [*out, "", *markdown(RECOVERY_COLUMNS, rows)]


def _spread(values: list[float]) -> str:
    """The median, and (min-max) when there are several."""
    middle = f"{statistics.median(values):.2f}"
    return middle if len(values) < 2 else f"{middle} ({min(values):.2f}-{max(values):.2f})"
