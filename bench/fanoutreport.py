"""Printing the fan-out benchmark: the one desktop on both paths, the ratios, the crowd."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from .fanout import FanoutResult, FanoutRun, quantile_ms
from .relayreport import markdown

PATH_NAMES = {"direct": "Xvnc", "thinserve": "thinserve"}


def _number(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}" if value < 100 else f"{value:.0f}"


def _spread(
    runs: Sequence[FanoutRun], measure: Callable[[FanoutRun], float], digits: int = 1
) -> str:
    """The median over the rounds, and (min-max) when there are several."""
    values = [measure(r) for r in runs]
    middle = _number(statistics.median(values), digits)
    if len(values) < 2:
        return middle
    return f"{middle} ({_number(min(values), digits)}-{_number(max(values), digits)})"


def _pooled(runs: Sequence[FanoutRun], quantile: float) -> float:
    return quantile_ms(tuple(x for r in runs for x in r.latencies), quantile)


def _latency(runs: Sequence[FanoutRun], quantile: float) -> str:
    """The quantile over all rounds' latencies, and the rounds' own (min-max)."""
    pooled = _number(_pooled(runs, quantile))
    if len(runs) < 2:
        return pooled
    each = [r.latency_ms(quantile) for r in runs]
    return f"{pooled} ({_number(min(each))}-{_number(max(each))})"


def _percent(run: FanoutRun, cpu: float | None) -> float:
    return run.share(cpu) * 100.0


COLUMNS = (
    "path",
    "p50 ms",
    "p99 ms",
    "shown/s per terminal",
    "painted/s",
    "missed",
    "Xvnc CPU %",
    "thinserve CPU %",
    "servers CPU %",
    "generator core share %",
    "painter late p99 ms",
)


def _row(label: str, runs: Sequence[FanoutRun]) -> list[str]:
    return [
        label,
        _latency(runs, 0.5),
        _latency(runs, 0.99),
        _spread(runs, lambda r: r.shown_per_second),
        _number(statistics.median(r.painted_per_second for r in runs)),
        str(sum(r.missed for r in runs)),
        _spread(runs, lambda r: _percent(r, r.xvnc_cpu)),
        "-"
        if runs[0].thinserve_cpu is None
        else _spread(runs, lambda r: _percent(r, r.thinserve_cpu)),
        _spread(runs, lambda r: _percent(r, r.server_cpu)),
        _spread(runs, lambda r: r.generator_share * 100.0, 0),
        _number(max(r.late_p99 for r in runs) * 1000.0),
    ]


def one_desktop_section(result: FanoutResult) -> list[str]:
    options = result.options
    width, height = options.size
    by_path = {p: [r for r in result.runs if r.path == p] for p in PATH_NAMES}
    out = [
        "",
        f"### {options.terminals} terminals watching one {width}x{height} desktop "
        f"({options.rate:.0f} changes/s)",
        "",
    ]
    rows = [_row(PATH_NAMES[p], runs) for p, runs in by_path.items() if runs]
    out += markdown(COLUMNS, rows)
    direct, ours = by_path["direct"], by_path["thinserve"]
    if not direct or not ours:
        return out
    ratios = [
        ["p50", _ratio(_pooled(ours, 0.5), _pooled(direct, 0.5))],
        ["p99", _ratio(_pooled(ours, 0.99), _pooled(direct, 0.99))],
        ["CPU: thinserve and its Xvnc / Xvnc", _ratio(_median_share(ours), _median_share(direct))],
        [
            "CPU: thinserve alone / Xvnc",
            _ratio(
                statistics.median(r.share(r.thinserve_cpu) for r in ours), _median_share(direct)
            ),
        ],
    ]
    out += ["", "thinserve / Xvnc (under 1: thinserve is faster or cheaper):", ""]
    return out + markdown(("measure", "thinserve / Xvnc"), ratios)


def _median_share(runs: Sequence[FanoutRun]) -> float:
    return statistics.median(r.share(r.server_cpu) for r in runs)


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"


def crowd_section(result: FanoutResult) -> list[str]:
    runs = result.crowd
    if not runs:
        return []
    options = result.options
    per = options.crowd_terminals // max(1, options.crowd_desktops)
    out = [
        "",
        f"### {options.crowd_terminals} terminals on {options.crowd_desktops} desktops "
        f"through thinserve ({per} on each, {options.crowd_rate:.0f} changes/s on each)",
        "",
    ]
    return out + markdown(COLUMNS, [_row("thinserve", runs)])


def render(result: FanoutResult, machine: list[str], pinned: bool) -> list[str]:
    options = result.options
    out = ["", "## thinserve fan-out benchmark", ""]
    out += [f"- {line}" for line in machine]
    core = (
        "Xvnc and thinserve on core 0, this process (painting, every terminal) on the others"
        if pinned
        else "no pinning (one core)"
    )
    out.append(f"- {core}")
    out.append(
        f"- replays of {options.seconds:.0f} s, {options.rounds} round(s) per path, the paths "
        "alternating; latency pooled over the rounds, (min-max) of single rounds; CPU in % of "
        "one core, median (min-max) over the rounds; see docs/performance.md"
    )
    return out + one_desktop_section(result) + crowd_section(result)
