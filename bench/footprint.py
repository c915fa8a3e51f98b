"""What thinserve costs at rest: memory per desktop and per terminal, idle CPU.

Memory is thinserve's resident set (VmRSS) as a separate process, read
once it is quiet (no CPU used for half a second): with one 1920x1080
desktop and no terminal, with one terminal, then with FOOTPRINT_DESKTOPS
desktops and as many terminals.  The differences give the cost of one
more desktop, one more terminal, and a desktop with its terminal.

Idle CPU: thinserve with one desktop and one connected terminal, first
with nothing changing, then with the ``clock`` workload ticking once a
second, each for ``idle_seconds`` but at least ``MIN_IDLE_SECONDS``.  The
kernel counts CPU time in clock ticks (10 ms at 100 Hz), so one tick over
the window is the smallest share the figure can show: 0.03% of a core
over 30 s, where a 3 s window could show only 0% or 0.33%.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import processes
from .options import RelayOptions
from .painter import Painter
from .relay import Progress, stderr_progress
from .replay import Desktop, replay, sleep, wait_showing
from .terminal import TIGHT, MeasuringTerminal, Tracker, connect
from .workloads import Workload, clock
from .xvnc import Xvnc, start_many

FOOTPRINT_SIZE = (1920, 1080)
FOOTPRINT_DESKTOPS = 5
QUIET_TIMEOUT = 15.0
MIN_IDLE_SECONDS = 30.0  # long enough to resolve a few hundredths of a percent


@dataclass(frozen=True)
class Footprint:
    size: tuple[int, int]
    desktops: int  # the larger setup's desktop count
    rss_one_desktop: int  # bytes, no terminal
    rss_one_terminal: int  # bytes, one desktop and its terminal
    rss_desktops: int  # FOOTPRINT_DESKTOPS desktops, no terminal
    rss_terminals: int  # FOOTPRINT_DESKTOPS desktops and as many terminals
    xvnc_rss: int  # one Xvnc desktop, for comparison
    idle_still: float  # share of a core: nothing changing
    idle_clock: float  # share of a core: the clock ticking
    clock_latency_ms: float  # median, for the record
    idle_window: float  # seconds each idle CPU figure was measured over

    @property
    def idle_resolution(self) -> float:
        """The smallest share of a core the idle figures can show: one clock tick."""
        return 1.0 / processes.CLOCK_TICKS / self.idle_window

    @property
    def per_desktop(self) -> float:
        return (self.rss_desktops - self.rss_one_desktop) / (self.desktops - 1)

    @property
    def per_terminal(self) -> float:
        return (self.rss_terminals - self.rss_desktops) / self.desktops

    @property
    def per_desktop_with_terminal(self) -> float:
        return (self.rss_terminals - self.rss_one_terminal) / (self.desktops - 1)


async def quiet(pid: int) -> int:
    """Wait until the process has used no CPU for half a second; its RSS then."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    last = processes.cpu_seconds(pid)
    while time.monotonic() < deadline:
        await sleep(0.5)
        now = processes.cpu_seconds(pid)
        if now == last:
            break
        last = now
    return processes.rss_bytes(pid)


async def terminals_for(
    server: processes.ServerProcess, count: int, frame: np.ndarray, first: int
) -> list[MeasuringTerminal]:
    """``count`` terminals from distinct addresses, each showing ``frame``."""
    out = []
    for i in range(count):
        terminal = await connect(server.port, TIGHT, f"127.0.2.{first + i}")
        await wait_showing(terminal, frame)
        out.append(terminal)
    return out


async def idle_share(server: processes.ServerProcess, seconds: float) -> float:
    meter = processes.Meter(server.pid).start()
    await sleep(seconds)
    cpu, wall = meter.read()
    return cpu / wall


async def run(options: RelayOptions, progress: Progress = stderr_progress) -> Footprint:
    width, height = FOOTPRINT_SIZE
    window = max(options.idle_seconds, MIN_IDLE_SECONDS)
    workload = clock(width, height, window)
    xvncs = [Xvnc(width, height, name=f"memory-{i}") for i in range(FOOTPRINT_DESKTOPS)]
    progress(f"[footprint] starting {len(xvncs)} Xvnc desktops at {width}x{height}")
    start_many(xvncs)
    terminals: list[MeasuringTerminal] = []
    try:
        for xvnc in xvncs:
            Painter(xvnc).show_initial(workload)
        one = await _one_desktop(xvncs[0], workload, window, progress)
        progress(f"[footprint] thinserve with {len(xvncs)} desktops")
        many = processes.thinserve([(x.name, x.port) for x in xvncs])
        many.start()
        try:
            rss_many = await quiet(many.pid)
            terminals = await terminals_for(many, len(xvncs), workload.initial, 10)
            rss_many_terminals = await quiet(many.pid)
        finally:
            for terminal in terminals:
                terminal.close()
            many.stop()
        xvnc_rss = processes.rss_bytes(xvncs[0].process.pid) if xvncs[0].process else 0
        return Footprint(
            FOOTPRINT_SIZE,
            len(xvncs),
            one.rss,
            one.rss_terminal,
            rss_many,
            rss_many_terminals,
            xvnc_rss,
            one.still,
            one.ticking,
            one.latency_ms,
            window,
        )
    finally:
        for xvnc in xvncs:
            xvnc.stop()


@dataclass(frozen=True)
class _OneDesktop:
    rss: int
    rss_terminal: int
    still: float
    ticking: float
    latency_ms: float


async def _one_desktop(
    xvnc: Xvnc, workload: Workload, window: float, progress: Progress
) -> _OneDesktop:
    progress(f"[footprint] thinserve with one desktop: memory, then idle CPU ({window:.0f} s each)")
    server = processes.thinserve([(xvnc.name, xvnc.port)])
    server.start()
    terminals: list[MeasuringTerminal] = []
    try:
        rss = await quiet(server.pid)
        terminals = await terminals_for(server, 1, workload.initial, 1)
        rss_terminal = await quiet(server.pid)
        still = await idle_share(server, window)
        tracker = Tracker(workload.steps)
        terminals[0].tracker = tracker
        meter = processes.Meter(server.pid).start()
        await replay([Desktop(Painter(xvnc), workload, [tracker])])
        cpu, wall = meter.read()
        latencies = sorted(tracker.latencies)
        median = latencies[len(latencies) // 2] * 1000.0 if latencies else float("nan")
        return _OneDesktop(rss, rss_terminal, still, cpu / wall, median)
    finally:
        for terminal in terminals:
            terminal.close()
        server.stop()
