"""The relay suite: the same workload seen directly, through a byte relay, through thinserve.

For every screen size one Xvnc desktop is started, with a byte relay and a
thinserve process in front of it (both pinned to their own core).  For
every workload and terminal profile, each path in turn: the workload's
first frame is painted, a fresh measuring terminal connects and waits
until it shows it, then the steps are replayed on schedule while the
terminal's tracker times each one, and the relay process's CPU time is
read from /proc.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from thinserve.rfbclient import ClientOptions

from . import processes
from .options import PATHS, RelayOptions
from .painter import Painter
from .replay import Desktop, replay, settled, wait_showing
from .terminal import PROFILES, Profile, Tracker, connect
from .workloads import WORKLOADS, Workload
from .xvnc import Xvnc

Progress = Callable[[str], None]
TERMINAL_ADDRESS = "127.0.0.2"


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    """One workload replayed once on one path."""

    workload: str
    size: tuple[int, int]
    profile: str
    path: str
    latencies: tuple[float, ...]  # seconds, one per delivered step
    missed: int  # steps painted but never seen
    shown: int  # steps seen themselves, not merged into a later update
    steps: int
    seconds: float  # from the first paint to the end of the settle time
    span: float  # the schedule's length: last step's time plus one interval
    updates: int
    bytes: int
    server_cpu: float | None  # seconds of the relay process; None on the direct path
    late_p99: float  # the painter's own lateness, seconds (load generator health)

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(quantile * (len(ordered) - 1))))
        return ordered[index] * 1000.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000.0 if self.latencies else float("nan")

    @property
    def fps(self) -> float:
        """Steps the terminal showed by themselves per second of the schedule."""
        return self.shown / self.span if self.span else 0.0

    @property
    def painted_fps(self) -> float:
        return self.steps / self.span if self.span else 0.0

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_frame(self) -> float:
        """Bytes per frame shown: a path that shows more of the painted frames
        (when not all fit) is not charged for them as if they were extra."""
        return self.bytes / max(1, self.shown)

    @property
    def cpu_per_terminal_minute(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / (self.seconds / 60.0)


def _span(workload: Workload) -> float:
    steps = workload.steps
    if len(steps) < 2:
        return 1.0
    return steps[-1].at - steps[0].at + (steps[-1].at - steps[0].at) / (len(steps) - 1)


class Paths:
    """One desktop and the three ways to reach it."""

    def __init__(self, xvnc: Xvnc) -> None:
        self.xvnc = xvnc
        self.relay = processes.byte_relay(xvnc.port)
        self.thinserve = processes.thinserve([(xvnc.name, xvnc.port)])

    def start(self) -> None:
        self.relay.start()
        self.thinserve.start()

    def stop(self) -> None:
        self.relay.stop()
        self.thinserve.stop()

    def port(self, path: str) -> int:
        return {"direct": self.xvnc.port, "relay": self.relay.port}.get(path, self.thinserve.port)

    def server(self, path: str) -> processes.ServerProcess | None:
        return {"relay": self.relay, "thinserve": self.thinserve}.get(path)


class Reach(Protocol):
    """Where a path's terminal connects, and the relay process on it (if any)."""

    def port(self, path: str) -> int: ...
    def server(self, path: str) -> processes.ServerProcess | None: ...


async def measure(
    paths: Reach,
    painter: Painter,
    workload: Workload,
    profile: Profile,
    path: str,
    options: ClientOptions | None = None,
) -> Run:
    painter.show_initial(workload)
    terminal = await connect(paths.port(path), profile, TERMINAL_ADDRESS, options)
    try:
        await wait_showing(terminal, workload.initial)
        await settled(terminal)
        tracker = Tracker(workload.steps)
        terminal.tracker = tracker
        terminal.reset_counters()
        server = paths.server(path)
        meter = processes.Meter(server.pid).start() if server else None
        started = time.perf_counter()
        late = await replay([Desktop(painter, workload, [tracker])])
        seconds = time.perf_counter() - started
        cpu = meter.read()[0] if meter else None
    finally:
        terminal.close()
    return Run(
        workload.name,
        (workload.width, workload.height),
        profile.name,
        path,
        tuple(tracker.latencies),
        tracker.missed,
        tracker.shown,
        len(workload.steps),
        seconds,
        _span(workload),
        terminal.updates,
        terminal.bytes,
        cpu,
        sorted(late)[int(0.99 * (len(late) - 1))] if late else 0.0,
    )


async def run_size(size: tuple[int, int], options: RelayOptions, progress: Progress) -> list[Run]:
    width, height = size
    xvnc = Xvnc(width, height, name=f"bench-{width}x{height}")
    progress(f"[relay {width}x{height}] starting Xvnc, the byte relay and thinserve")
    xvnc.start()
    paths = Paths(xvnc)
    runs = []
    try:
        paths.start()
        painter = Painter(xvnc)
        for name in options.workloads:
            progress(f"[relay {width}x{height}] generating {name}")
            workload = WORKLOADS[name](width, height, options.seconds)
            for key in options.profiles:
                for path in PATHS:
                    progress(f"[relay {width}x{height}] {name} {PROFILES[key].name} {path}")
                    runs.append(await measure(paths, painter, workload, PROFILES[key], path))
        painter.close()
    finally:
        paths.stop()
        xvnc.stop()
    return runs


async def run(options: RelayOptions, progress: Progress = stderr_progress) -> list[Run]:
    runs = []
    for size in options.sizes:
        runs += await run_size(size, options, progress)
    return runs
