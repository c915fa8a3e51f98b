"""Printing the flood benchmark: the paired terminal per phase, thinserve's memory and
descriptors, what became of the fake terminals and how long they took to be served."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .flood import CROWD_ADDRESS, DESKTOP, FLOOD_PREFIX, TERMINAL, FloodResult, Phase
from .floodserver import Sample
from .relayreport import markdown
from .terminal import TIGHT
from .tlsreport import quantile

WINDOWS = 5  # each phase is cut in this many windows for the spread columns
MIB = 1024 * 1024
OUTCOMES = ("waiting", "turned away", "refused", "failed", "pending")


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    value = seconds * 1000.0
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"


def _spread(values: Sequence[float], digits: int = 1) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    return f"{min(finite):.{digits}f}-{max(finite):.{digits}f}"


def windows(phase: Phase) -> tuple[list[float], list[float]]:
    """(median latency in ms, updates per second) in each of WINDOWS equal parts."""
    width = phase.seconds / WINDOWS if phase.seconds else 0.0
    medians, rates = [], []
    for w in range(WINDOWS):
        lo, hi = w * width, (w + 1) * width
        mine = [x for x, at in zip(phase.latencies, phase.steps, strict=False) if lo <= at < hi]
        medians.append(statistics.median(mine) * 1000.0 if mine else float("nan"))
        count = sum(lo <= t < hi for t in phase.updates)
        rates.append(count / width if width else float("nan"))
    return medians, rates


PHASE_COLUMNS = (
    "phase",
    "seconds",
    "updates/s",
    "updates/s per window",
    "steps shown/painted",
    "p50 ms",
    "p50 per window",
    "p99 ms",
    "max ms",
    "missed",
    "painter late p99 ms",
    "thinserve CPU",
)


def part(phase: Phase, name: str, lo: float, hi: float, samples: list[Sample]) -> Phase:
    """The steps of ``phase`` painted from ``lo`` to ``hi`` seconds after its start;
    thinserve's CPU from ``samples``; ``shown`` is not known for a part (-1)."""
    index = [i for i, at in enumerate(phase.steps) if lo <= at < hi]
    delivered = len(phase.latencies)
    piece = Phase(name, seconds=max(0.0, min(hi, phase.seconds) - lo), shown=-1)
    piece.steps = [phase.steps[i] - lo for i in index]
    piece.latencies = [phase.latencies[i] for i in index if i < delivered]
    piece.missed = sum(i >= delivered for i in index)
    piece.updates = [t - lo for t in phase.updates if lo <= t < hi]
    piece.late = [phase.late[i] for i in index]
    if len(samples) >= 2 and samples[-1].at > samples[0].at:
        share = (samples[-1].cpu - samples[0].cpu) / (samples[-1].at - samples[0].at)
        piece.cpu = share * piece.seconds
    return piece


def phase_row(phase: Phase) -> list[str]:
    medians, rates = windows(phase)
    shown = "-" if phase.shown < 0 else str(phase.shown)
    return [
        phase.name,
        f"{phase.seconds:.1f}",
        f"{phase.update_rate:.1f}",
        _spread(rates),
        f"{shown}/{len(phase.steps)}",
        _ms(quantile(phase.latencies, 0.5)),
        _spread(medians),
        _ms(quantile(phase.latencies, 0.99)),
        _ms(max(phase.latencies, default=float("nan"))),
        str(phase.missed),
        _ms(quantile(phase.late, 0.99)),
        f"{100.0 * phase.cpu / phase.seconds:.0f}%" if phase.seconds else "-",
    ]


def during_parts(result: FloodResult) -> list[Phase]:
    """The during phase cut where the flood settled: arriving, then held."""
    during = next((p for p in result.phases if p.name == "during"), None)
    if during is None or result.settled is None:
        return []
    cut = result.settled["settled_s"] + (result.flood_started - during.started)
    if not 0 < cut < during.seconds:
        return []
    by_label = {
        label: [s for s in result.samples if s.label == label] for label in ("during", "held")
    }
    return [
        part(during, f"- arriving (0-{cut:.1f} s)", 0.0, cut, by_label["during"]),
        part(during, f"- held ({cut:.1f}-{during.seconds:.1f} s)", cut, during.seconds,
             by_label["held"]),
    ]  # fmt: skip


def phase_table(phases: list[Phase], parts: list[Phase]) -> list[str]:
    rows = []
    for phase in phases:
        rows.append(phase_row(phase))
        if phase.name == "during":
            rows += [phase_row(piece) for piece in parts]
    out = markdown(PHASE_COLUMNS, rows)
    by_name = {p.name: p for p in phases}
    before = by_name.get("before")
    if before is None:
        return out
    ratios = []
    compared = [p for p in phases if p.name == "during"] + parts
    compared += [p for p in phases if p.name == "after"]
    for phase in compared:
        name = phase.name.removeprefix("- ").split(" (")[0]
        ratios.append(
            [
                f"{name} / before",
                _ratio(phase.update_rate, before.update_rate),
                _ratio(quantile(phase.latencies, 0.5), quantile(before.latencies, 0.5)),
                _ratio(quantile(phase.latencies, 0.99), quantile(before.latencies, 0.99)),
            ]
        )
    heads = ("same run", "updates/s ratio", "p50 ratio", "p99 ratio")
    return [*out, "", *markdown(heads, ratios)]


def _median(samples: list[Sample], attr: str) -> float:
    values = [getattr(s, attr) for s in samples]
    return float(statistics.median(values)) if values else float("nan")


def _mib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value / MIB:.1f}"


def memory_table(result: FloodResult, waiting: int) -> list[str]:
    before = [s for s in result.samples if s.label == "before"]
    flood = [s for s in result.samples if s.label in ("during", "held", "closing")]
    after = [s for s in result.samples if s.label == "after"]
    rss_before, fds_before = _median(before, "rss"), _median(before, "fds")
    peak_rss = max((s.rss for s in flood), default=0)
    peak_fds = max((s.fds for s in flood), default=0)
    rows = [
        [
            "thinserve RSS MiB",
            _mib(rss_before),
            _mib(result.held_rss),
            _mib(peak_rss),
            _mib(_median(after, "rss")),
        ],
        [
            "open file descriptors",
            f"{fds_before:.0f}",
            str(result.held_fds),
            str(peak_fds),
            f"{_median(after, 'fds'):.0f}",
        ],
    ]
    out = markdown(("measure", "before", "flood held", "peak", "after"), rows)
    notes = []
    if waiting and not math.isnan(rss_before):
        per = (result.held_rss - rss_before) / waiting
        fds = (result.held_fds - fds_before) / waiting
        notes.append(
            f"RSS per admitted waiting connection: {per / 1024:.0f} KiB "
            f"((flood held - before) / {waiting} waiting); descriptors per waiting "
            f"connection {fds:.2f}"
        )
    if not math.isnan(rss_before) and after:
        kept = _median(after, "rss") - rss_before
        notes.append(f"RSS after the flood minus before: {kept / MIB:+.1f} MiB")
    if result.drained_s is not None:
        notes.append(
            f"descriptors back to the level before the flood {result.drained_s:.1f} s "
            "after the fake terminals closed"
        )
    else:
        notes.append("descriptors did not come back to the level before the flood in 30 s")
    return [*out, "", *(f"- {n}" for n in notes)]


def outcome_table(settled: dict[str, Any], result: FloodResult) -> list[str]:
    options = result.options
    groups = settled["groups"]
    labels = {
        "flood": f"flood: 1 each from {options.addresses} addresses ({FLOOD_PREFIX}.x.y)",
        "crowd": f"crowd: {options.crowd} from {CROWD_ADDRESS}",
    }
    rows = []
    for name in ("crowd", "flood"):
        group = groups.get(name)
        if not group or not group["peers"]:
            continue
        counts = group["outcomes"]
        rows.append([labels[name], str(group["peers"]), *(str(counts.get(k, 0)) for k in OUTCOMES)])
    out = markdown(("fake terminals", "peers", *OUTCOMES), rows)
    reasons: dict[str, int] = {}
    for group in groups.values():
        for reason, count in group["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    if reasons:
        ordered = sorted(reasons.items(), key=lambda item: -item[1])
        out += ["", *markdown(("reason given (addresses as ADDR)", "peers"), ordered_rows(ordered))]
    return out


def ordered_rows(items: list[tuple[str, int]]) -> list[list[str]]:
    return [[reason, str(count)] for reason, count in items]


TIMING = (
    ("waiting", "admitted: connect -> first update (pairing screen)"),
    ("turned away", "turned away: connect -> first update (busy screen)"),
    ("refused", "refused: connect -> reason"),
)


def timing_table(settled: dict[str, Any]) -> list[str]:
    rows = []
    for key, label in TIMING:
        values = [v / 1000.0 for g in settled["groups"].values() for v in g["ms"].get(key, [])]
        if not values:
            continue
        stats = (min(values), quantile(values, 0.5), quantile(values, 0.9))
        stats += (quantile(values, 0.99), max(values))
        rows.append([label, str(len(values)), *(_ms(v) for v in stats)])
    heads = ("new connections", "count", "min ms", "median ms", "p90 ms", "p99 ms", "max ms")
    out = markdown(heads, rows)
    out += [
        "",
        f"- all connections begun at once; the last TCP connect completed "
        f"{settled['connected_s']:.1f} s after the start, all settled (no peer on its way, "
        f"nothing changing for 4 s) after {settled['settled_s']:.1f} s",
    ]
    return out


def waiting_count(settled: dict[str, Any] | None) -> int:
    if settled is None:
        return 0
    return sum(g["outcomes"].get("waiting", 0) for g in settled["groups"].values())


def render(result: FloodResult, machine: list[str], pinned: bool) -> list[str]:
    options = result.options
    width, height = options.size
    out = ["", f"## thinserve flood benchmark: {options.addresses} fake terminals", ""]
    out += [f"- {line}" for line in machine]
    core = "on core 0, the benchmark on the others" if pinned else "no pinning (one core)"
    out += [
        f"- thinserve: a separate process {core}; the fake terminals from another process "
        "(bench/floodproc.py: RFB 3.8, None, ClientInit, one pixel asked and read, then idle)",
        f"- desktop: Xvnc {width}x{height} typed into at 20 keys/s (the typing workload); the "
        f"paired terminal: thinserve's RFB client from {TERMINAL} asking for {TIGHT.name}, "
        f"paired with {DESKTOP} by address through the admin API",
        "- thinserve's configuration:",
        "",
        "```toml",
        *result.config.rstrip().splitlines(),
        "```",
        "",
        "### The paired terminal before, during and after the flood",
        "",
        f"Latency: a painted step to the terminal having decoded it. 'per window': the "
        f"lowest and highest of {WINDOWS} equal parts of the phase (the spread).",
        "",
    ]
    out += phase_table(result.phases, during_parts(result))
    waiting = waiting_count(result.settled)
    out += ["", "### thinserve's memory and descriptors", ""]
    out += memory_table(result, waiting)
    if result.settled is not None:
        out += ["", "### What became of the fake terminals", ""]
        out += outcome_table(result.settled, result)
        out += ["", "### How long new connections took to be served", ""]
        out += timing_table(result.settled)
    out += [f"- NOTE {note}" for note in result.notes]
    return out
