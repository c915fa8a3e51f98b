"""The flood benchmark: a paired terminal before, during and after a flood of fake terminals.

One Xvnc desktop is typed into (the relay suite's typing workload, 20 keys
a second) and watched by one terminal paired with it by address through
the admin API.  The terminal's update rate and the latency of each painted
step are measured in three phases: before the flood, during it (from the
moment the flood starts until it has been held, settled, for a while),
and after it (the fake terminals gone).  The flood (bench/floodproc.py,
a process of its own) is a crowd of connections from one address, then
one handshaken fake terminal from each of N loopback addresses, all at
once; thinserve's caps (``max_unpaired``, ``max_per_address``,
``max_connections``) admit most, turn some away and refuse the rest.
thinserve's resident memory, open descriptors and CPU are sampled
throughout (bench/floodserver.py).

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .floodserver import Sample, Server, Vitals
from .options import FloodOptions
from .painter import Painter
from .replay import LEAD, SETTLE, settled, sleep, wait_for, wait_showing
from .terminal import TIGHT, MeasuringTerminal, Tracker, connect
from .workloads import Workload, typing
from .xvnc import Xvnc, XvncError

Progress = Callable[[str], None]
TERMINAL = "127.0.0.2"  # the paired terminal's address
DESKTOP = "flood-desk"
FLOOD_PREFIX = "127.3"
CROWD_ADDRESS = "127.4.0.1"
DRAIN_TIMEOUT = 30.0  # for thinserve's descriptors to come back down after the flood
FLOOD_START_TIMEOUT = 30.0


@dataclass
class Phase:
    """The paired terminal during one phase."""

    name: str
    seconds: float = 0.0  # painting time
    steps: list[float] = field(default_factory=list)  # each painted step's time, from the start
    latencies: list[float] = field(default_factory=list)  # seconds, the delivered steps in order
    shown: int = 0
    missed: int = 0
    updates: list[float] = field(default_factory=list)  # update times, from the start
    late: list[float] = field(default_factory=list)  # the painter's lateness, seconds
    cpu: float = 0.0  # thinserve's CPU seconds
    started: float = 0.0  # perf_counter at the first step

    @property
    def update_rate(self) -> float:
        return len(self.updates) / self.seconds if self.seconds else 0.0


@dataclass
class FloodResult:
    options: FloodOptions
    config: str  # thinserve's configuration
    phases: list[Phase]
    samples: list[Sample]
    settled: dict[str, Any] | None  # the flood process's "settled" report
    flood_started: float  # perf_counter of "go"
    held_rss: int  # thinserve's RSS once the flood settled (median of the hold)
    held_fds: int
    drained_s: float | None  # seconds for the descriptors to come back down after closing
    notes: list[str] = field(default_factory=list)


async def run_phase(
    name: str,
    terminal: MeasuringTerminal,
    painter: Painter,
    workload: Workload,
    pid: int,
    least: float,
    most: float,
    done: Callable[[], bool] = lambda: True,
    begin: Callable[[], None] = lambda: None,
) -> Phase:
    """Paint the workload's steps on schedule for ``least`` to ``most`` seconds
    (ending once ``done()`` past ``least``) while the terminal's tracker times
    them; ``begin`` is called at the first step."""
    painter.show_initial(workload)
    await wait_showing(terminal, workload.initial, timeout=30)
    await settled(terminal)
    phase = Phase(name)
    tracker = Tracker(workload.steps)
    terminal.tracker = tracker
    terminal.on_update = phase.updates.append
    meter = processes.Meter(pid).start()
    start = time.perf_counter() + LEAD
    phase.started = start
    begun = False
    try:
        for index, step in enumerate(workload.steps):
            finished = done()  # asked at every step: it may note when things happened
            if step.at > most or (step.at >= least and finished):
                break
            await sleep(start + step.at - time.perf_counter())
            if not begun:
                begin()
                begun = True
            painted = painter.paint(step.ops)
            phase.late.append(painted - (start + step.at))
            phase.steps.append(step.at)
            tracker.painted(index, painted)
        phase.seconds = time.perf_counter() - start
        phase.cpu = meter.read()[0]
        await wait_for(lambda: not tracker.pending, SETTLE)
    finally:
        terminal.tracker = None
        terminal.on_update = None
    end = start + phase.seconds
    phase.updates = [t - start for t in phase.updates if start <= t <= end]
    phase.latencies = list(tracker.latencies)
    phase.shown = tracker.shown
    phase.missed = tracker.missed
    return phase


def _median(values: list[int]) -> int:
    return int(statistics.median(values)) if values else 0


async def measure(
    options: FloodOptions, server: Server, xvnc: Xvnc, progress: Progress, result: FloodResult
) -> None:
    width, height = options.size
    painter = Painter(xvnc)
    most = max(options.during_max, options.phase_seconds)
    workload = typing(width, height, most + 1.0)
    await server.pair(TERMINAL, DESKTOP)
    terminal = await connect(server.port, TIGHT, TERMINAL)
    vitals = Vitals(server.pid).start()
    args = [
        "flood", str(server.port), "--prefix", FLOOD_PREFIX, "--count", str(options.addresses),
        "--crowd", str(options.crowd), "--crowd-address", CROWD_ADDRESS,
        "--settle", str(options.during_max), "--hold", str(options.during_max + 60),
    ]  # fmt: skip
    flooder = processes.LineProcess("bench.floodproc", args)
    try:
        if terminal.desktop_name != DESKTOP:
            raise XvncError(
                f"the paired terminal shows {terminal.desktop_name!r}, not {DESKTOP!r}: "
                "thinserve did not pair it by address"
            )
        flooder.start()
        if not await wait_for(lambda: flooder.last("ready") is not None, FLOOD_START_TIMEOUT):
            raise XvncError(f"the flood process did not start: {flooder.errors()[-500:]}")
        secs = options.phase_seconds
        progress(f"[flood] before: the paired terminal for {secs:.0f} s")
        vitals.label = "before"
        result.phases.append(
            await run_phase("before", terminal, painter, workload, server.pid, secs, secs)
        )
        settled_at: list[float] = []

        def flood_done() -> bool:
            report = flooder.last("settled")
            if report is None:
                return False
            if not settled_at:
                settled_at.append(time.perf_counter())
                vitals.label = "held"
                progress(f"[flood] settled after {report['settled_s']:.1f} s; holding it")
            return time.perf_counter() - settled_at[0] >= options.hold_seconds

        def go() -> None:
            result.flood_started = time.perf_counter()
            vitals.label = "during"
            flooder.send("go")

        progress(f"[flood] during: {options.addresses} fake terminals from as many addresses")
        result.phases.append(
            await run_phase(
                "during", terminal, painter, workload, server.pid,
                options.phase_seconds, options.during_max, flood_done, go,
            )
        )  # fmt: skip
        result.settled = flooder.last("settled")
        if result.settled is None:
            result.notes.append(
                f"the flood had not settled within {options.during_max:.0f} s; "
                "its counts are from the flood process's last status"
            )
        held = vitals.labelled("held") or vitals.labelled("during")
        result.held_rss = _median([s.rss for s in held[-8:]])
        result.held_fds = _median([s.fds for s in held[-8:]])
        vitals.label = "closing"
        progress("[flood] closing the fake terminals")
        flooder.send("close")
        await wait_for(lambda: flooder.last("closed") is not None or not flooder.running(), 30)
        before_fds = max((s.fds for s in vitals.labelled("before")), default=0)
        closed_at = time.perf_counter()
        if await wait_for(lambda: processes.open_fds(server.pid) <= before_fds + 2, DRAIN_TIMEOUT):
            result.drained_s = time.perf_counter() - closed_at
        progress(f"[flood] after: the paired terminal for {secs:.0f} s")
        vitals.label = "after"
        result.phases.append(
            await run_phase("after", terminal, painter, workload, server.pid, secs, secs)
        )
        if terminal.transport is None or terminal.closed.called:
            result.notes.append("the paired terminal's connection ended during the run")
    finally:
        vitals.stop()
        result.samples = vitals.samples
        flooder.stop()
        terminal.close()
        with contextlib.suppress(Exception):
            painter.close()


async def run(options: FloodOptions, progress: Progress) -> FloodResult:
    width, height = options.size
    folder = Path(tempfile.mkdtemp(prefix="thinserve-bench-flood-"))
    xvnc = Xvnc(width, height, name=DESKTOP)
    caps = {
        "max_unpaired": options.max_unpaired,
        "max_per_address": options.max_per_address,
        "max_connections": options.max_connections,
    }
    server: Server | None = None
    progress(f"[flood] starting Xvnc {width}x{height} and thinserve")
    try:
        xvnc.start()
        server = Server(folder, [(DESKTOP, xvnc.port)], [f"{TERMINAL}/32"], caps)
        result = FloodResult(options, server.config, [], [], None, 0.0, 0, 0, None)
        await server.start()
        await measure(options, server, xvnc, progress, result)
    finally:
        if server is not None:
            server.stop()
        xvnc.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return result
