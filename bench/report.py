"""Printing: the machine the benchmark ran on and one table per content.

Tables are Markdown pipe tables with aligned columns, so the output reads
in a terminal and pastes into docs/performance.md as it is.
"""

from __future__ import annotations

import math
import os
import platform
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from protocols.rfb.constants import Encoding

from .encodings import OwnResult, Row
from .options import Options

COLUMNS = (
    "encoding",
    "ts enc MPix/s",
    "ts dec MPix/s",
    "ts bytes/frame",
    "Xvnc bytes/frame",
    "ts/Xvnc bytes",
    "Xvnc req->decoded ms",
    "Xvnc req->last byte ms",
    "Xvnc enc MPix/s >=",
    "ts/Xvnc speed <=",
    "dec MPix/s of Xvnc",
)


@dataclass(frozen=True)
class PeerResult:
    frame_bytes: int
    request_ms: float  # request to the update decoded by thinserve's client
    last_byte_ms: float  # request to the arrival of the update's last byte
    encode_mpix_bound: float  # frame pixels / last_byte_ms: Xvnc's encoding speed at least
    unhindered: bool  # Xvnc never had to wait for the last-byte client's socket
    decode_mpix: float
    psnr: float  # of the decoded frame against the content; inf when exact
    shares: dict[int, float]  # encoding -> share of the pixels it carried


@dataclass(frozen=True)
class RowResult:
    row: Row
    own: OwnResult
    peer: PeerResult | None  # None: Xvnc not measured or does not offer it


@dataclass(frozen=True)
class ContentResult:
    name: str
    rows: list[RowResult]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    """The 1, 5 and 15 minute load averages, as a string."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(peer: str) -> list[str]:
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()})",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"numpy {_version('numpy')}, Pillow {_version('pillow')}, "
        f"simplejpeg {_version('simplejpeg')}, zlib {zlib.ZLIB_RUNTIME_VERSION}, "
        f"zlib-ng {_version('zlib-ng')}",
        f"OS: {platform.platform()}; load average before the run {load()}",
        f"Peer: {peer}",
    ]


def _figure(value: float) -> str:
    """One decimal below 100, none from 100 on."""
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cells(result: RowResult) -> list[str]:
    own, peer = result.own, result.peer
    cells = [result.row.name, _figure(own.encode_mpix), _figure(own.decode_mpix)]
    cells.append(f"{own.frame_bytes:,}")
    if peer is None:
        return cells + ["-"] * (len(COLUMNS) - len(cells))
    return [
        *cells,
        f"{peer.frame_bytes:,}",
        f"{own.frame_bytes / peer.frame_bytes:.2f}",
        f"{peer.request_ms:.0f}",
        _figure(peer.last_byte_ms),
        _figure(peer.encode_mpix_bound),
        f"{own.encode_mpix / peer.encode_mpix_bound:.2f}",
        _figure(peer.decode_mpix),
    ]


def table(rows: list[RowResult]) -> list[str]:
    """A Markdown table: first column left-aligned, numbers right-aligned."""
    body = [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [list(COLUMNS), *body]) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
    return [line(list(COLUMNS)), rule + "|", *(line(cells) for cells in body)]


def _quality(psnr: float) -> str:
    return "exact" if math.isinf(psnr) else f"PSNR {psnr:.1f} dB"


def _percent(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _encoding_name(encoding: int) -> str:
    try:
        return Encoding(encoding).name.title().replace("Rre", "RRE").replace("Zrle", "ZRLE")
    except ValueError:
        return str(encoding)


def notes(rows: list[RowResult]) -> list[str]:
    """Footnotes: lossy quality, lossless mismatches, what Xvnc actually sent."""
    out = []
    for result in rows:
        own, peer, row = result.own, result.peer, result.row
        if not row.lossless:
            peer_q = f", Xvnc {_quality(peer.psnr)}" if peer else ""
            out.append(f"{row.name}: thinserve {_quality(own.psnr)}{peer_q}")
        elif not math.isinf(own.psnr):
            out.append(f"{row.name}: WARNING thinserve's frame decoded inexactly")
        if peer is None:
            continue
        if row.lossless and not math.isinf(peer.psnr):
            out.append(f"{row.name}: WARNING Xvnc's frame decoded inexactly")
        if not peer.unhindered:
            out.append(f"{row.name}: WARNING Xvnc may have waited for the last-byte client")
        wanted = row.encodings[0]
        if peer.shares.get(wanted, 0.0) < 0.999:
            parts = sorted(peer.shares.items(), key=lambda item: -item[1])
            shares = ", ".join(f"{_encoding_name(e)} {_percent(s)}" for e, s in parts)
            out.append(f"{row.name}: Xvnc sent the pixels as {shares}")
    return out


def render(options: Options, machine: list[str], results: list[ContentResult]) -> list[str]:
    """The whole report: machine, settings, then a table and notes per content."""
    out = ["## thinserve encoding benchmark", ""]
    out += [f"- {line}" for line in machine]
    out.append(
        f"- Frames {options.width}x{options.height}, 32 bpp depth 24; "
        f"speeds are the median of {options.repetitions} repetitions"
    )
    out.append("- ts = thinserve; Xvnc = TigerVNC's Xvnc on loopback; see docs/performance.md")
    for content in results:
        out += ["", f"### {content.name} ({options.width}x{options.height})", ""]
        out += table(content.rows)
        extra = notes(content.rows)
        if extra:
            out += ["", *(f"- {line}" for line in extra)]
    return out
