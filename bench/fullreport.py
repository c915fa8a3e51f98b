"""Printing the full-screen benchmark: one table per content, then thinserve over Xvnc."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .fullcapture import Sample
from .fullscreen import PATHS, UPDATES, FullscreenResult
from .relayreport import markdown
from .terminal import PROFILES

PATH_NAMES = {"direct": "Xvnc", "thinserve": "thinserve"}
MEASURES = ("first_rect", "last_byte", "decoded")


def _ms(seconds: float) -> str:
    value = seconds * 1000.0
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _spread(values: Sequence[float]) -> str:
    """Median (min-max) in milliseconds."""
    if not values:
        return "-"
    return f"{_ms(statistics.median(values))} ({_ms(min(values))}-{_ms(max(values))})"


def _bytes(values: Sequence[int]) -> str:
    middle = f"{statistics.median(values):,.0f}"
    if min(values) == max(values):
        return middle
    return f"{middle} ({min(values):,}-{max(values):,})"


def _median(samples: Sequence[Sample], measure: str) -> float:
    values = [float(getattr(s, measure)) for s in samples]
    return statistics.median(values) if values else math.nan


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"


def content_table(result: FullscreenResult, name: str) -> list[str]:
    width, height = result.options.size
    headers = ("profile", "update", "path", "first rect ms", "last byte ms", "decoded ms", "bytes")
    rows = []
    for key in result.options.profiles:
        for update in UPDATES:
            for path in PATHS:
                samples = result.samples.get((name, key, path, update), [])
                if not samples:
                    continue
                rows.append(
                    [
                        PROFILES[key].name,
                        update,
                        PATH_NAMES[path],
                        *(_spread([getattr(s, m) for s in samples]) for m in MEASURES),
                        _bytes([s.bytes for s in samples]),
                    ]
                )
    return ["", f"### {name} ({width}x{height})", "", *markdown(headers, rows)]


def ratio_table(result: FullscreenResult) -> list[str]:
    headers = ("content", "profile", "update", "first rect", "last byte", "decoded", "bytes")
    rows = []
    for name in result.options.contents:
        for key in result.options.profiles:
            for update in UPDATES:
                direct = result.samples.get((name, key, "direct", update), [])
                ours = result.samples.get((name, key, "thinserve", update), [])
                cells = [_ratio(_median(ours, m), _median(direct, m)) for m in (*MEASURES, "bytes")]
                rows.append([name, PROFILES[key].name, update, *cells])
    out = [
        "",
        "### thinserve / Xvnc (ratio of the medians; under 1: thinserve is faster or smaller)",
    ]
    return [*out, "", *markdown(headers, rows)]


def hindered_lines(result: FullscreenResult) -> list[str]:
    hindered = [
        f"{name} {PROFILES[key].name} {update} {PATH_NAMES[path]}"
        for (name, key, path, update), samples in result.samples.items()
        if any(s.hindered for s in samples)
    ]
    if not hindered:
        return ["- the timing connection's socket never held more than half its buffer"]
    return [
        "- the server may have waited for the timing connection's socket (bytes waiting past "
        "half its buffer) in: " + "; ".join(hindered)
    ]


def render(result: FullscreenResult, machine: list[str]) -> list[str]:
    options = result.options
    width, height = options.size
    out = ["", "## thinserve full-screen benchmark", ""]
    out += [f"- {line}" for line in machine]
    core = (
        "Xvnc and thinserve on core 0, the measuring client on the others"
        if result.pinned
        else "Xvnc and thinserve free to use every core; the client decodes once an update is in"
    )
    out.append(f"- {core}")
    out.append(
        f"- {width}x{height}; {options.rounds} rounds after {options.warmup} warm-up, "
        "the paths alternating; median (min-max) over the rounds; see docs/performance.md"
    )
    out += hindered_lines(result)
    for name in options.contents:
        out += content_table(result, name)
    return out + ratio_table(result)
