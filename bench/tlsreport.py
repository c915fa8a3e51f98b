"""Printing the TLS benchmark: set-up times, workload latencies, X509None against None."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .options import TLSOptions
from .relay import Run
from .relayreport import markdown
from .terminal import TIGHT
from .tlscost import Setup, SizeResult, TLSResult
from .tlsserver import PATHS, SOURCE

NONE, TLS = PATHS


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (as the relay suite's p99), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    value = seconds * 1000.0
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"


def _diff(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) else f"{(a - b) * 1000.0:+.2f}"


MEASURES = (("connect -> ServerInit", "to_init"), ("connect -> first update decoded", "to_frame"))


def setup_tables(setups: dict[str, Setup]) -> list[str]:
    rows, ratios = [], []
    for label, attr in MEASURES:
        for path in PATHS:
            values = getattr(setups[path], attr)
            stats = (min(values), statistics.median(values), quantile(values, 0.9), max(values))
            rows.append([label, path, *(_ms(v) for v in stats)])
        none, tls = getattr(setups[NONE], attr), getattr(setups[TLS], attr)
        medians = statistics.median(tls), statistics.median(none)
        p90s = quantile(tls, 0.9), quantile(none, 0.9)
        paired = statistics.median(t - n for t, n in zip(tls, none, strict=True))
        ratios.append(
            [
                label,
                _diff(*medians),
                f"{paired * 1000.0:+.2f}",
                _ratio(*medians),
                _diff(*p90s),
                _ratio(*p90s),
            ]
        )
    out = markdown(("measure", "path", "min ms", "median ms", "p90 ms", "max ms"), rows)
    heads = (f"{TLS}-{NONE} median ms", "paired ms", "ratio median", f"{TLS}-{NONE} p90 ms")
    out += ["", *markdown(("measure", *heads, "ratio p90"), ratios)]
    off = {p: s.off_desktop for p, s in setups.items() if s.off_desktop}
    if off:
        out += ["", f"- WARNING first updates that did not show the desktop: {off}"]
    return out


def _pooled(runs: Sequence[Run]) -> tuple[list[float], float, float]:
    """Latencies of all rounds (s), thinserve CPU s per terminal-minute, fps shown."""
    latencies = [x for r in runs for x in r.latencies]
    cpu = sum(r.server_cpu or 0.0 for r in runs) / (sum(r.seconds for r in runs) / 60.0)
    fps = sum(r.shown for r in runs) / sum(r.span for r in runs)
    return latencies, cpu, fps


WORKLOAD_COLUMNS = (
    "workload",
    "path",
    "p50 ms",
    "p99 ms",
    "p50 per round",
    "fps shown/painted",
    "thinserve CPU s/term-min",
    "missed",
)


def workload_tables(runs: list[Run]) -> list[str]:
    rows, diffs = [], []
    for name in dict.fromkeys(r.workload for r in runs):
        pooled, rounds_of = {}, {}
        for path in PATHS:
            mine = rounds_of[path] = [r for r in runs if r.workload == name and r.path == path]
            latencies, cpu, fps = pooled[path] = _pooled(mine)
            rounds = [r.median_ms for r in mine]
            rows.append(
                [
                    name,
                    path,
                    _ms(quantile(latencies, 0.5)),
                    _ms(quantile(latencies, 0.99)),
                    f"{min(rounds):.1f}-{max(rounds):.1f}",
                    f"{fps:.1f}/{mine[0].painted_fps:.1f}",
                    f"{cpu:.2f}",
                    str(sum(r.missed for r in mine)),
                ]
            )
        (none, none_cpu, _), (tls, tls_cpu, _) = pooled[NONE], pooled[TLS]
        p50 = quantile(tls, 0.5), quantile(none, 0.5)
        p99 = quantile(tls, 0.99), quantile(none, 0.99)
        pairs = zip(rounds_of[TLS], rounds_of[NONE], strict=True)
        paired = statistics.median(t.median_ms / n.median_ms for t, n in pairs)
        cpu = _ratio(tls_cpu, none_cpu)
        diffs.append(
            [name, _diff(*p50), _ratio(*p50), f"{paired:.2f}", _diff(*p99), _ratio(*p99), cpu]
        )
    out = markdown(WORKLOAD_COLUMNS, rows)
    heads = (f"{TLS}-{NONE} p50 ms", "ratio p50", "paired ratio p50", f"{TLS}-{NONE} p99 ms")
    return [*out, "", *markdown(("workload", *heads, "ratio p99", "ratio CPU"), diffs)]


def size_section(result: SizeResult, options: TLSOptions) -> list[str]:
    width, height = result.size
    count, warm = options.connections, options.warmup
    out = ["", f"### Connection set-up at {width}x{height}", ""]
    out += [f"{count} fresh connections per path after {warm} warm-up each, alternating:", ""]
    out += setup_tables(result.setups)
    if result.runs:
        out += ["", f"### Workloads at {width}x{height}, terminal asks for {TIGHT.name}", ""]
        out.append(f"{options.rounds} replays of {options.seconds:.0f} s per path, alternating:")
        out += ["", *workload_tables(result.runs)]
        late = max(r.late_p99 for r in result.runs)
        out += ["", f"- painter lateness p99 at most {late * 1000:.1f} ms (load generator health)"]
    return out


def render(options: TLSOptions, machine: list[str], result: TLSResult, pinned: bool) -> list[str]:
    out = ["", "## thinserve TLS benchmark: VeNCrypt X509None next to None", ""]
    out += [f"- {line}" for line in machine]
    core = "on core 0, the benchmark on the others" if pinned else "no pinning (one core)"
    out.append(
        f"- thinserve: a separate process {core}, its certificate from [server] tls_cert "
        "and tls_key; a loopback terminal is offered None and VeNCrypt"
    )
    cert = (
        "an EC P-256 self-signed client certificate"
        if result.client_certificate
        else "NO client certificate (thinserve.rfbclient cannot present one yet)"
    )
    out.append(
        f"- TLS link: {result.link}; server certificate RSA 2048 self-signed, pinned as the "
        f"terminal's ca_file; the terminal presents {cert}; a full handshake per connection"
    )
    out.append(
        f"- Terminal: thinserve's own RFB client (bench/terminal.py) from {SOURCE} on both "
        "paths; see docs/performance.md"
    )
    for size in result.sizes:
        out += size_section(size, options)
    return out
