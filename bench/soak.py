"""The soak benchmark: terminals coming, typing and going for minutes; does thinserve grow?

Every terminal (thinserve's own RFB client, bench/terminal.py) has a
loopback address of its own, paired by address through the admin API with
an Xvnc desktop of its own (the broker pairs a desktop with one terminal).
In cycles each one connects, checks that it shows its desktop, types 10
to 30 keys one at a time, each timed from sending it to having decoded its
echo (bench/echo.py draws a character on the desktop for every key press),
disconnects, and pauses.  Meanwhile a process of fake terminals
(bench/floodproc.py ``churn``) keeps reconnecting from many addresses,
each waiting with a pairing code a few seconds; thinserve's
``max_unpaired`` is set under their number, so some are turned away all
the time.

Every interval a table row gives thinserve's resident memory and open
descriptors, its CPU share, the typed keys' latency over the interval and
the connections so far; at the end, memory and descriptors at the start
and end and their growth.  Rows go to stdout as they are measured.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from twisted.internet import defer

from . import processes
from .floodserver import Sample, Server, Vitals
from .keyecho import ECHO_TIMEOUT, echo_once
from .options import SoakOptions
from .relayreport import markdown
from .replay import settled, sleep, wait_for
from .terminal import TIGHT, MeasuringTerminal, connect
from .tlsreport import quantile
from .xvnc import Xvnc, XvncError, start_many

Progress = Callable[[str], None]
FIRST_ADDRESS = 10  # terminals at 127.0.0.10, .11, ...
CHURN_PREFIX = "127.7"
HELPER_START_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0
REST_TIMEOUT = 30.0  # for the descriptors to come back down once the load stops
MIB = 1024 * 1024
KEYS = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]


@dataclass
class Seat:
    """One terminal's address and desktop, and what it saw."""

    index: int
    address: str
    desktop: str
    made: int = 0  # connections that reached their first update
    failed: int = 0  # connections that did not
    off_desktop: int = 0  # connections that did not show this seat's desktop
    typed: list[tuple[float, float]] = field(default_factory=list)  # (sent at, latency s)
    missed: list[float] = field(default_factory=list)  # sent at, never echoed


class Soak:
    def __init__(self, options: SoakOptions, port: int, seats: list[Seat]) -> None:
        self.options = options
        self.port = port
        self.seats = seats
        self.stopping = False
        self.deadline = 0.0

    async def seat_loop(self, seat: Seat) -> None:
        rng = random.Random(seat.index)
        await sleep(seat.index * 0.1)  # staggered
        for _cycle in range(100_000):  # bounded; the deadline ends it first
            if self.stopping or time.monotonic() > self.deadline:
                return
            try:
                terminal = await connect(self.port, TIGHT, seat.address)
            except Exception:  # refused, reset or timed out: counted, and on to the next
                seat.failed += 1
                await sleep(rng.uniform(*self.options.pause))
                continue
            seat.made += 1
            try:
                if terminal.desktop_name != seat.desktop:
                    seat.off_desktop += 1
                else:
                    await settled(terminal)
                    await self.type_keys(terminal, seat, rng)
            finally:
                terminal.close()
                await wait_for(lambda t=terminal: t.closed.called, CLOSE_TIMEOUT)
            await sleep(rng.uniform(*self.options.pause))

    async def type_keys(self, terminal: MeasuringTerminal, seat: Seat, rng: random.Random) -> None:
        for _ in range(rng.randint(*self.options.keys)):
            if self.stopping or time.monotonic() > self.deadline or terminal.closed.called:
                return
            sent = time.perf_counter()
            latency = await echo_once(terminal, rng.choice(KEYS))
            if latency is None:
                seat.missed.append(sent)
            else:
                seat.typed.append((sent, latency))
            await sleep(self.options.key_gap)


@dataclass
class Row:
    elapsed: float
    rss: int
    fds: int
    cpu: float  # share of a core over the interval
    latencies: list[float]
    missed: int
    made: int
    failed: int
    off_desktop: int
    churn: dict[str, int]


ROW_COLUMNS = (
    "elapsed s",
    "RSS MiB",
    "open fds",
    "thinserve CPU",
    "keys",
    "p50 ms",
    "p99 ms",
    "max ms",
    "missed",
    "terminal conns",
    "failed/off",
    "fake conns",
    "fake served",
    "turned away",
    "refused",
    "fake failed",
)


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    value = seconds * 1000.0
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def row_cells(row: Row) -> list[str]:
    churn = row.churn
    return [
        f"{row.elapsed:.0f}",
        f"{row.rss / MIB:.1f}",
        str(row.fds),
        f"{100.0 * row.cpu:.0f}%",
        str(len(row.latencies)),
        _ms(quantile(row.latencies, 0.5)),
        _ms(quantile(row.latencies, 0.99)),
        _ms(max(row.latencies, default=float("nan"))),
        str(row.missed),
        str(row.made),
        f"{row.failed}/{row.off_desktop}",
        str(churn.get("attempts", 0)),
        str(churn.get("served", 0)),
        str(churn.get("turned away", 0)),
        str(churn.get("refused", 0)),
        str(churn.get("failed", 0)),
    ]


class Table:
    """A pipe table printed row by row: fixed column widths from the headers."""

    def __init__(self, headers: tuple[str, ...], least: int = 6) -> None:
        self.widths = [max(len(h), least) for h in headers]
        self.headers = headers

    def line(self, cells: list[str] | tuple[str, ...]) -> str:
        padded = [cells[0].ljust(self.widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], self.widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    def head(self) -> list[str]:
        rule = "|:" + "-" * (self.widths[0] + 1) + "|"
        rule += "|".join("-" * (w + 1) + ":" for w in self.widths[1:]) + "|"
        return [self.line(self.headers), rule]


def emit(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def second_half(samples: list[Sample]) -> list[Sample]:
    """The samples of the later half of the time they span."""
    if not samples:
        return []
    middle = (samples[0].at + samples[-1].at) / 2
    return [s for s in samples if s.at >= middle]


def slope_mib_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, MiB per hour."""
    if len(samples) < 3:
        return float("nan")
    t = np.array([s.at for s in samples]) - samples[0].at
    rss = np.array([s.rss for s in samples], dtype=float) / MIB
    if t[-1] <= 0:
        return float("nan")
    slope = np.polyfit(t, rss, 1)[0]
    return float(slope) * 3600.0


def short_config(config: str) -> list[str]:
    """The configuration with only its first [[desktop]] table written out."""
    head, *tables = config.rstrip().split("\n\n[[desktop]]")
    lines = head.splitlines()
    if tables:
        lines += ["", "[[desktop]]", *tables[0].strip().splitlines()]
    if len(tables) > 1:
        names = [t.split('"')[1] for t in (tables[1], tables[-1])]
        lines += [
            "",
            f"# ... {len(tables) - 1} more [[desktop]] tables like it, {names[0]} to {names[1]},",
            "# each at its own Xvnc's port",
        ]
    return lines


def header(options: SoakOptions, server: Server, machine: list[str], pinned: bool) -> list[str]:
    width, height = options.size
    core = "on core 0, the benchmark on the others" if pinned else "no pinning (one core)"
    first = f"127.0.0.{FIRST_ADDRESS}"
    last = f"127.0.0.{FIRST_ADDRESS + options.terminals - 1}"
    unit = "minute" if options.minutes == 1 else "minutes"
    out = ["", f"## thinserve soak benchmark: {options.minutes:g} {unit}", ""]
    out += [f"- {line}" for line in machine]
    out += [
        f"- thinserve: a separate process {core}",
        f"- {options.terminals} terminals ({first} to {last}, thinserve's RFB client asking for "
        f"{TIGHT.name}), each paired by address with its own Xvnc {width}x{height} desktop; in "
        f"cycles: connect, type {options.keys[0]}-{options.keys[1]} keys "
        f"({options.key_gap * 1000:.0f} ms after each echo), disconnect, pause "
        f"{options.pause[0]:g}-{options.pause[1]:g} s",
        f"- a key's latency: sent by the terminal to its echo (bench/echo.py draws a character "
        f"per key press) decoded; missed: no echo within {ECHO_TIMEOUT:.0f} s",
        f"- fake terminals: {options.churn} at a time from {4 * options.churn} addresses "
        f"({CHURN_PREFIX}.x.y), each served (pairing screen) then held 1-4 s, closed and "
        f"started again (bench/floodproc.py churn); max_unpaired = {options.max_unpaired}",
        "- thinserve's configuration:",
        "",
        "```toml",
        *short_config(server.config),
        "```",
        "",
        f"### Every {options.interval:g} s",
        "",
        "Keys and latency over the interval; connections counted from the start.",
        "",
    ]
    return out


def summary(
    rows: list[Row],
    start: Sample,
    rested: Sample | None,
    load_samples: list[Sample],
    seats: list[Seat],
    churn_final: dict[str, object] | None,
) -> list[str]:
    out = ["", "### Start and end", ""]
    first, middle, last = rows[0], rows[len(rows) // 2], rows[-1]

    def rested_value(show: Callable[[Sample], str]) -> str:
        return show(rested) if rested is not None else "-"

    rows_out = [
        [
            "thinserve RSS MiB",
            f"{start.rss / MIB:.1f}",
            f"{first.rss / MIB:.1f}",
            f"{middle.rss / MIB:.1f}",
            f"{last.rss / MIB:.1f}",
            rested_value(lambda r: f"{r.rss / MIB:.1f}"),
            f"{(last.rss - first.rss) / MIB:+.1f}",
            f"{(last.rss - middle.rss) / MIB:+.1f}",
            rested_value(lambda r: f"{(r.rss - start.rss) / MIB:+.1f}"),
        ],
        [
            "open file descriptors",
            str(start.fds),
            str(first.fds),
            str(middle.fds),
            str(last.fds),
            rested_value(lambda r: str(r.fds)),
            f"{last.fds - first.fds:+d}",
            f"{last.fds - middle.fds:+d}",
            rested_value(lambda r: f"{r.fds - start.fds:+d}"),
        ],
    ]
    heads = (
        "measure",
        "start (no terminals)",
        "first row",
        "middle row",
        "last row",
        "after the load",
        "growth: last - first row",
        "growth: last - middle row",
        "growth: after - start",
    )
    out += markdown(heads, rows_out)
    half = second_half(load_samples)
    trend = (slope_mib_per_hour(load_samples), slope_mib_per_hour(half))
    latencies = [latency for seat in seats for _, latency in seat.typed]
    medians = [quantile(r.latencies, 0.5) for r in rows if r.latencies]
    missed = sum(len(seat.missed) for seat in seats)
    out += [
        "",
        f"- RSS trend under load (least squares, MiB/hour): {trend[0]:+.1f} from the first "
        f"row on, {trend[1]:+.1f} over the second half",
        f"- typed keys: {len(latencies)} echoed, {missed} missed; over the whole run p50 "
        f"{_ms(quantile(latencies, 0.5))} ms, p99 {_ms(quantile(latencies, 0.99))} ms; "
        f"p50 per row {_spread_ms(medians)} ms",
        f"- terminal connections: {sum(s.made for s in seats)} made, "
        f"{sum(s.failed for s in seats)} failed, "
        f"{sum(s.off_desktop for s in seats)} not showing their desktop",
    ]
    if churn_final is not None:
        counts = churn_final.get("counts", {})
        reasons = churn_final.get("reasons", {})
        out.append(f"- fake terminal connections: {counts}")
        if reasons:
            out.append(f"- reasons given to fake terminals: {reasons}")
    if rested is None:
        out.append(f"- descriptors did not come back down within {REST_TIMEOUT:.0f} s of the end")
    return out


def _spread_ms(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    return f"{min(finite) * 1000:.1f}-{max(finite) * 1000:.1f}"


async def measure(
    options: SoakOptions,
    server: Server,
    seats: list[Seat],
    displays: list[str],
    machine: list[str],
    pinned: bool,
    progress: Progress,
) -> None:
    seconds = options.minutes * 60.0
    width, height = options.size
    echo = processes.LineProcess(
        "bench.echo", [str(width), str(height), str(seconds + 300), *displays]
    )
    churn_args = [
        "churn", str(server.port), "--prefix", CHURN_PREFIX,
        "--concurrency", str(options.churn), "--seconds", str(seconds),
    ]  # fmt: skip
    churn = processes.LineProcess("bench.floodproc", churn_args)
    vitals = Vitals(server.pid, every=1.0)
    soak = Soak(options, server.port, seats)
    loops: list[defer.Deferred[None]] = []
    try:
        echo.start()
        churn.start()
        for helper, name in ((echo, "echo"), (churn, "fake terminals")):
            if not await wait_for(lambda h=helper: h.last("ready") is not None, 60):
                raise XvncError(f"the {name} process did not start: {helper.errors()[-500:]}")
        await sleep(1.0)  # the blank editors reach thinserve's copies
        vitals.label = "start"
        start = vitals.sample()
        vitals.start()
        emit(header(options, server, machine, pinned))
        table = Table(ROW_COLUMNS)
        emit(table.head())
        began = time.perf_counter()
        soak.deadline = time.monotonic() + seconds
        vitals.label = "load"
        churn.send("go")
        loops = [defer.ensureDeferred(soak.seat_loop(seat)) for seat in seats]
        progress(f"[soak] {len(seats)} terminals and {options.churn} fake terminals for "
                 f"{options.minutes:g} min")  # fmt: skip
        rows: list[Row] = []
        last_at, last_cpu = began, start.cpu
        intervals = max(1, round(seconds / options.interval))
        for number in range(1, intervals + 1):
            await sleep(began + number * options.interval - time.perf_counter())
            now = time.perf_counter()
            reading = vitals.sample()
            typed = [lat for s in seats for at, lat in s.typed if last_at <= at < now]
            missed = sum(last_at <= at < now for s in seats for at in s.missed)
            status = churn.last("status") or {}
            row = Row(
                now - began,
                reading.rss,
                reading.fds,
                (reading.cpu - last_cpu) / (now - last_at),
                typed,
                missed,
                sum(s.made for s in seats),
                sum(s.failed for s in seats),
                sum(s.off_desktop for s in seats),
                dict(status.get("counts", {})),
            )
            rows.append(row)
            emit([table.line(row_cells(row))])
            last_at, last_cpu = now, reading.cpu
        soak.stopping = True
        progress("[soak] stopping the terminals and the fake terminals")
        await wait_for(lambda: all(loop.called for loop in loops), 30)
        churn.send("close")
        await wait_for(lambda: churn.last("closed") is not None or not churn.running(), 30)
        first_row = began + options.interval
        load_samples = [s for s in vitals.labelled("load") if s.at >= first_row]
        vitals.label = "rest"
        rested: Sample | None = None
        if await wait_for(lambda: processes.open_fds(server.pid) <= start.fds + 2, REST_TIMEOUT):
            await sleep(2.0)
            rested = vitals.sample()
        emit(summary(rows, start, rested, load_samples, seats, churn.last("closed")))
    finally:
        soak.stopping = True
        vitals.stop()
        churn.stop()
        echo.stop()
        for loop in loops:
            if not loop.called:
                loop.cancel()


async def run(options: SoakOptions, machine: list[str], pinned: bool, progress: Progress) -> None:
    width, height = options.size
    folder = Path(tempfile.mkdtemp(prefix="thinserve-bench-soak-"))
    desktops = [Xvnc(width, height, name=f"soak-{i + 1:02d}") for i in range(options.terminals)]
    seats = [
        Seat(i, f"127.0.0.{FIRST_ADDRESS + i}", desktop.name) for i, desktop in enumerate(desktops)
    ]
    server: Server | None = None
    progress(f"[soak] starting {len(desktops)} Xvnc {width}x{height} desktops and thinserve")
    try:
        start_many(desktops)
        server = Server(
            folder,
            [(d.name, d.port) for d in desktops],
            [f"{seat.address}/32" for seat in seats],
            {"max_unpaired": options.max_unpaired},
        )
        await server.start()
        for seat in seats:
            await server.pair(seat.address, seat.desktop)
        displays = [f":{d.display_number}" for d in desktops]
        await measure(options, server, seats, displays, machine, pinned, progress)
    finally:
        if server is not None:
            server.stop()
        for desktop in desktops:
            with contextlib.suppress(Exception):
                desktop.stop()
        shutil.rmtree(folder, ignore_errors=True)
