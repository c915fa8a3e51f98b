"""How many terminals one core of thinserve carries with office workloads.

One Xvnc desktop per terminal (``office`` workload: typing on the left,
bursts of scrolling on the right, each desktop at its own phase) and one
thinserve process, pinned to a core of its own, serving them all; every
terminal gets the first free desktop and learns which from the desktop
name in ServerInit.  The count of terminals grows step by step; at each
step every desktop's first frame is repainted, new terminals connect, all
terminals must show the first frame, then all workloads are replayed
together while thinserve's CPU time is metered.  The test stops after the
first step whose 99th-percentile latency passes the limit.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from . import processes
from .options import RelayOptions
from .painter import Painter
from .relay import Progress, stderr_progress
from .replay import Desktop, replay, wait_showing
from .terminal import TIGHT, MeasuringTerminal, Tracker, connect
from .workloads import office
from .xvnc import Xvnc, XvncError, start_many

LATENCY_LIMIT_MS = 100.0


@dataclass(frozen=True)
class ScaleStep:
    terminals: int
    latencies: tuple[float, ...]  # seconds, over all terminals
    missed: int
    steps: int
    seconds: float
    server_cpu: float  # seconds
    late_p99: float  # the painter's own lateness, seconds
    generator_share: float  # CPU of this process and the Xvncs, per core they may use

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))] * 1000.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000.0 if self.latencies else float("nan")

    @property
    def core_share(self) -> float:
        return self.server_cpu / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_terminal_minute(self) -> float:
        return self.server_cpu / self.terminals / (self.seconds / 60.0)

    @property
    def within_limit(self) -> bool:
        return self.missed == 0 and self.latency_ms(0.99) <= LATENCY_LIMIT_MS


@dataclass(frozen=True)
class ScaleResult:
    size: tuple[int, int]
    steps: list[ScaleStep]

    @property
    def carried(self) -> int:
        """The most terminals measured within the limit (0 if none was)."""
        ok = [s.terminals for s in self.steps if s.within_limit]
        return max(ok, default=0)


class Fleet:
    """The desktops, their painters and workloads, and thinserve in front."""

    def __init__(self, count: int, size: tuple[int, int], seconds: float) -> None:
        width, height = size
        self.xvncs = [Xvnc(width, height, name=f"office-{i:02d}") for i in range(count)]
        self.workloads = {
            x.name: office(width, height, seconds, phase=i / count)
            for i, x in enumerate(self.xvncs)
        }
        self.painters: dict[str, Painter] = {}
        self.server: processes.ServerProcess | None = None
        self.terminals: list[MeasuringTerminal] = []

    def start(self) -> None:
        start_many(self.xvncs)
        self.painters = {x.name: Painter(x) for x in self.xvncs}
        self.server = processes.thinserve([(x.name, x.port) for x in self.xvncs])
        self.server.start()

    def stop(self) -> None:
        for terminal in self.terminals:
            terminal.close()
        if self.server is not None:
            self.server.stop()
        for xvnc in self.xvncs:
            xvnc.stop()

    async def grow_to(self, count: int) -> None:
        """Repaint every first frame; connect terminals up to ``count``; wait for them."""
        for name, painter in self.painters.items():
            painter.show_initial(self.workloads[name])
        assert self.server is not None
        while len(self.terminals) < count:
            source = f"127.0.1.{len(self.terminals) + 1}"
            self.terminals.append(await connect(self.server.port, TIGHT, source))
        for terminal in self.terminals:
            if terminal.desktop_name not in self.workloads:
                raise XvncError(f"a terminal was shown {terminal.desktop_name!r}, not a desktop")
            await wait_showing(terminal, self.workloads[terminal.desktop_name].initial, 60)

    async def measure(self) -> ScaleStep:
        desktops = {}
        for terminal in self.terminals:
            name = terminal.desktop_name
            desktop = desktops.setdefault(name, Desktop(self.painters[name], self.workloads[name]))
            terminal.tracker = Tracker(desktop.workload.steps)
            desktop.trackers.append(terminal.tracker)
        assert self.server is not None
        meter = processes.Meter(self.server.pid).start()
        generator = [processes.Meter(os.getpid()).start()]
        generator += [processes.Meter(x.process.pid).start() for x in self.xvncs if x.process]
        late = await replay(list(desktops.values()))
        cpu, seconds = meter.read()
        generator_cpu = sum(m.read()[0] for m in generator)
        trackers = [t.tracker for t in self.terminals if t.tracker is not None]
        for terminal in self.terminals:
            terminal.tracker = None
        return ScaleStep(
            len(self.terminals),
            tuple(x for t in trackers for x in t.latencies),
            sum(t.missed for t in trackers),
            sum(len(d.workload.steps) for d in desktops.values()),
            seconds,
            cpu,
            sorted(late)[int(0.99 * (len(late) - 1))] if late else 0.0,
            generator_cpu / seconds / len(os.sched_getaffinity(0)),
        )


async def run(options: RelayOptions, progress: Progress = stderr_progress) -> ScaleResult:
    counts = sorted(options.scale_counts)
    width, height = options.scale_size
    progress(f"[scale] generating {counts[-1]} office workloads at {width}x{height}")
    fleet = Fleet(counts[-1], options.scale_size, options.scale_seconds)
    steps = []
    try:
        progress(f"[scale] starting {counts[-1]} Xvnc desktops and thinserve")
        fleet.start()
        for count in counts:
            progress(f"[scale] {count} terminals: connecting")
            await fleet.grow_to(count)
            progress(f"[scale] {count} terminals: replaying {options.scale_seconds:.0f} s")
            step = await fleet.measure()
            steps.append(step)
            progress(
                f"[scale] {count} terminals: p99 {step.latency_ms(0.99):.0f} ms, "
                f"thinserve {step.core_share:.0%} of a core"
            )
            if not step.within_limit:
                break
    finally:
        fleet.stop()
    return ScaleResult(options.scale_size, steps)
