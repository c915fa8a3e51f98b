"""Printing the relay suite: per-path tables, ratios, scale, footprint, targets."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .footprint import Footprint
from .qemu import EchoRun
from .relay import Run
from .scale import LATENCY_LIMIT_MS, ScaleResult

MIB = 1024 * 1024


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A pipe table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
    return [line(headers), rule + "|", *(line(r) for r in rows)]


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.2f}"


def _bytes(value: float) -> str:
    return f"{value:,.0f}"


PATH_COLUMNS = (
    "workload",
    "path",
    "p50 ms",
    "p99 ms",
    "fps shown/painted",
    "bytes/frame",
    "updates/s",
    "relay CPU s/term-min",
    "missed",
)


def path_table(runs: Sequence[Run]) -> list[str]:
    rows = []
    for r in runs:
        cpu = r.cpu_per_terminal_minute
        rows.append(
            [
                r.workload,
                r.path,
                _ms(r.median_ms),
                _ms(r.latency_ms(0.99)),
                f"{r.fps:.1f}/{r.painted_fps:.1f}",
                _bytes(r.bytes_per_frame),
                f"{r.updates_per_second:.0f}",
                "-" if cpu is None else f"{cpu:.2f}",
                str(r.missed),
            ]
        )
    return markdown(PATH_COLUMNS, rows)


RATIO_COLUMNS = (
    "workload",
    "ts-direct p50 ms",
    "ts/direct p50",
    "ts/relay p50",
    "ts/direct p99",
    "ts/direct bytes",
    "ts/relay CPU",
)


def _by_path(runs: Sequence[Run]) -> dict[tuple[str, tuple[int, int], str], dict[str, Run]]:
    groups: dict[tuple[str, tuple[int, int], str], dict[str, Run]] = {}
    for r in runs:
        groups.setdefault((r.workload, r.size, r.profile), {})[r.path] = r
    return groups


def ratio_table(runs: Sequence[Run]) -> list[str]:
    rows = []
    for (workload, _, _), paths in _by_path(runs).items():
        ts, direct, relay = paths.get("thinserve"), paths.get("direct"), paths.get("relay")
        if ts is None or direct is None or relay is None:
            continue
        cpu = "-"
        if ts.server_cpu is not None and relay.server_cpu:
            cpu = f"{ts.server_cpu / relay.server_cpu:.0f}"
        rows.append(
            [
                workload,
                f"{ts.median_ms - direct.median_ms:+.1f}",
                _ratio(ts.median_ms, direct.median_ms),
                _ratio(ts.median_ms, relay.median_ms),
                _ratio(ts.latency_ms(0.99), direct.latency_ms(0.99)),
                _ratio(ts.bytes_per_frame, direct.bytes_per_frame),
                cpu,
            ]
        )
    return markdown(RATIO_COLUMNS, rows)


def runs_section(runs: Sequence[Run]) -> list[str]:
    out: list[str] = []
    keys = list(dict.fromkeys((r.size, r.profile) for r in runs))
    for size, profile in keys:
        group = [r for r in runs if (r.size, r.profile) == (size, profile)]
        out += ["", f"### {size[0]}x{size[1]}, terminal asks for {profile}", ""]
        out += path_table(group)
        out += ["", "Ratios (ts = thinserve):", ""]
        out += ratio_table(group)
        late = max(r.late_p99 for r in group)
        out += ["", f"- painter lateness p99 at most {late * 1000:.1f} ms (load generator health)"]
    return out


SCALE_COLUMNS = (
    "terminals",
    "p50 ms",
    "p99 ms",
    "thinserve core share",
    "CPU s/term-min",
    "steps",
    "missed",
    "painter late p99 ms",
    "generator core share",
)


def scale_section(result: ScaleResult) -> list[str]:
    width, height = result.size
    out = ["", f"### Scale: office workload at {width}x{height}, thinserve on one core", ""]
    rows = [
        [
            str(s.terminals),
            _ms(s.median_ms),
            _ms(s.latency_ms(0.99)),
            f"{s.core_share:.0%}",
            f"{s.cpu_per_terminal_minute:.2f}",
            str(s.steps),
            str(s.missed),
            _ms(s.late_p99 * 1000.0),
            f"{s.generator_share:.0%}",
        ]
        for s in result.steps
    ]
    out += markdown(SCALE_COLUMNS, rows)
    out += [
        "",
        f"- terminals carried with p99 <= {LATENCY_LIMIT_MS:.0f} ms: {result.carried}"
        + (
            ""
            if result.steps and not result.steps[-1].within_limit
            else " (or more: the limit was not reached)"
        ),
    ]
    return out


def footprint_section(f: Footprint) -> list[str]:
    width, height = f.size
    rows = [
        ["thinserve, one desktop, no terminal", f"{f.rss_one_desktop / MIB:.1f} MiB"],
        ["thinserve, one desktop and its terminal", f"{f.rss_one_terminal / MIB:.1f} MiB"],
        [f"thinserve, {f.desktops} desktops", f"{f.rss_desktops / MIB:.1f} MiB"],
        [f"thinserve, {f.desktops} desktops and terminals", f"{f.rss_terminals / MIB:.1f} MiB"],
        ["per desktop (marginal)", f"{f.per_desktop / MIB:.1f} MiB"],
        ["per terminal (marginal)", f"{f.per_terminal / MIB:.1f} MiB"],
        [
            "per desktop with one terminal (marginal)",
            f"{f.per_desktop_with_terminal / MIB:.1f} MiB",
        ],
        ["one Xvnc desktop itself, for comparison", f"{f.xvnc_rss / MIB:.1f} MiB"],
        ["idle CPU: nothing changing", f"{f.idle_still:.2%} of a core"],
        ["idle CPU: clock ticking each second", f"{f.idle_clock:.2%} of a core"],
        [
            "idle CPU: window (resolution)",
            f"{f.idle_window:.0f} s each ({f.idle_resolution:.3%} of a core)",
        ],
        ["clock tick latency, median", f"{_ms(f.clock_latency_ms)} ms"],
    ]
    out = ["", f"### Footprint at {width}x{height} (thinserve's resident memory, VmRSS)", ""]
    return out + markdown(("measure", "value"), rows)


def qemu_section(peer: str, runs: Sequence[EchoRun]) -> list[str]:
    out = ["", "### QEMU peer: a typed character echoed by the guest's console", ""]
    out += [f"- {peer}", ""]
    direct = next((r for r in runs if r.path == "direct"), None)
    rows = []
    for r in runs:
        added = "-"
        if direct is not None and r is not direct:
            added = f"{r.latency_ms(0.5) - direct.latency_ms(0.5):+.1f}"
        cpu = "-" if r.server_cpu is None else f"{r.server_cpu:.2f}"
        rows.append(
            [
                r.path,
                _ms(r.latency_ms(0.5)),
                _ms(r.latency_ms(0.99)),
                added,
                str(r.keys),
                str(r.missed),
                _bytes(r.bytes / max(1, r.keys)),
                cpu,
            ]
        )
    headers = (
        "path",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "keys",
        "missed",
        "bytes/key",
        "relay CPU s",
    )
    return out + markdown(headers, rows)


def _find(runs: Sequence[Run], workload: str, path: str) -> list[Run]:
    return [r for r in runs if r.workload == workload and r.path == path]


def targets_section(
    runs: Sequence[Run],
    scale: ScaleResult | None,
    footprint: Footprint | None,
    echo: Sequence[EchoRun] = (),
) -> list[str]:
    rows: list[list[str]] = []
    by_path = {r.path: r for r in echo}
    if "direct" in by_path and "thinserve" in by_path:
        added = by_path["thinserve"].latency_ms(0.5) - by_path["direct"].latency_ms(0.5)
        rows.append(
            [
                "typed character: added p50 <= 2 ms (QEMU echo)",
                f"{added:+.1f} ms",
                _yes(added <= 2.0),
            ]
        )
    groups = _by_path(runs)
    for (workload, size, profile), paths in groups.items():
        ts, direct = paths.get("thinserve"), paths.get("direct")
        if ts is None or direct is None:
            continue
        where = f"{size[0]}x{size[1]} {profile}"
        if workload == "typing":
            added = ts.median_ms - direct.median_ms
            rows.append(
                [
                    f"typed character: added p50 <= 2 ms ({where})",
                    f"{added:+.1f} ms",
                    _yes(added <= 2.0),
                ]
            )
        if workload == "video":
            ratio = ts.median_ms / direct.median_ms
            rows.append(
                [
                    f"full frames: p50 <= 1.25x direct ({where})",
                    f"{ratio:.2f}x",
                    _yes(ratio <= 1.25),
                ]
            )
        ratio = ts.bytes_per_frame / max(1.0, direct.bytes_per_frame)
        rows.append(
            [f"bytes/frame <= Xvnc: {workload} ({where})", f"{ratio:.2f}x", _yes(ratio <= 1.0)]
        )
    if scale is not None:
        rows.append(
            [
                "50 office terminals on one core, p99 < 100 ms",
                f"{scale.carried} terminals",
                _yes(scale.carried >= 50),
            ]
        )
    if footprint is not None:
        per = footprint.per_desktop_with_terminal / MIB
        rows.append(
            [
                "memory per 1920x1080 desktop with a terminal < 32 MiB",
                f"{per:.1f} MiB",
                _yes(per < 32),
            ]
        )
        rows.append(
            [
                "idle desktop and terminal < 0.5% of a core",
                f"{footprint.idle_still:.2%} still, {footprint.idle_clock:.2%} with the clock",
                _yes(footprint.idle_clock < 0.005),
            ]
        )
    return ["", "### Targets", "", *markdown(("target", "measured", "met"), rows)]


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"
