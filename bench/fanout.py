"""Many terminals watching one desktop: Xvnc serving them all, or thinserve.

One 1920x1080 Xvnc desktop shows the probe picture (``bench/probescene.py``)
and changes ``rate`` times a second (``bench/probeload.py``: keys typed at
an xterm's prompt, the clock ticking each second).  On the direct path N
terminals connect to Xvnc itself (its clients share the desktop:
``-AlwaysShared``); on the thinserve path N terminals connect to a
thinserve process (``bench/serverproc.py``) in front of it.  thinserve's
broker gives the desktop to the first terminal (a one-desktop pool); the
others, each from its own 127.x address, watch it view-only, shadowed
through the admin API (``AdminClient.shadow``), as an administrator lets
a terminal watch a desktop.  thinserve runs only for its own rounds, so
it costs the direct path nothing.

Xvnc and thinserve share core 0; this process (painting, every terminal
decoding and tracking, on one event loop) keeps the other cores
(``bench/servercore.py``).  Every terminal has its own tracker, so each
painted step gets a latency per terminal: from the desktop having the
pixels to that terminal having decoded them (the relay suite's method,
``bench/terminal.py``).  CPU time of Xvnc, of thinserve and of this
process is read from /proc over the replay.

The crowd: ``crowd_terminals`` terminals on ``crowd_desktops`` desktops
through one thinserve, as many on each, every desktop typing and ticking
at ``crowd_rate`` steps a second at its own phase.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import threads

from thinserve.admin.client import AdminClient, AdminError

from . import processes, servercore
from .options import FanoutOptions
from .painter import Painter
from .probeload import probe_workload
from .replay import Desktop, replay, sleep, wait_for, wait_showing
from .terminal import TIGHT, MeasuringTerminal, Tracker, connect
from .workloads import Workload
from .xvnc import Xvnc, XvncError, start_many

Progress = Callable[[str], None]
SHOW_TIMEOUT = 90.0  # seconds for every terminal to show the first frame
ADMIN_TIMEOUT = 30.0
QUIET = 0.25  # seconds without any terminal's update that count as settled


@dataclass(frozen=True)
class FanoutRun:
    """One replay on one path."""

    path: str  # "direct" or "thinserve"
    terminals: int
    desktops: int
    latencies: tuple[float, ...]  # seconds, one per step and terminal
    shown: int  # steps seen by themselves, summed over the terminals
    missed: int  # steps a terminal never saw, summed
    steps: int  # steps painted, summed over the desktops
    span: float  # seconds of the schedule
    seconds: float  # wall time of the replay
    xvnc_cpu: float  # seconds, all Xvnc desktops
    thinserve_cpu: float | None  # seconds; None on the direct path
    late_p99: float  # the painter's own lateness, seconds
    generator_share: float  # this process's CPU per core it may use

    def latency_ms(self, quantile: float) -> float:
        return quantile_ms(self.latencies, quantile)

    @property
    def shown_per_second(self) -> float:
        """Steps one terminal showed by themselves per second, on average."""
        return self.shown / self.terminals / self.span

    @property
    def painted_per_second(self) -> float:
        """Steps one desktop painted per second."""
        return self.steps / self.desktops / self.span

    @property
    def server_cpu(self) -> float:
        return self.xvnc_cpu + (self.thinserve_cpu or 0.0)

    def share(self, cpu: float | None) -> float:
        """``cpu`` seconds as a share of one core over the replay."""
        return float("nan") if cpu is None else cpu / self.seconds


def quantile_ms(values: tuple[float, ...], quantile: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))] * 1000.0


@dataclass(frozen=True)
class FanoutResult:
    options: FanoutOptions
    runs: list[FanoutRun]  # the one desktop, both paths, in the order measured
    crowd: list[FanoutRun]  # the crowd, thinserve only


class Stage:
    """Desktops with their workloads and painters; thinserve in front when asked."""

    def __init__(
        self,
        count: int,
        size: tuple[int, int],
        seconds: float,
        rate: float,
        database: str | None = ":memory:",
        extra: str = "",
    ) -> None:
        """``database`` and ``extra`` (TOML) for the thinserve it starts."""
        self.database = database
        self.extra = extra
        width, height = size
        self.xvncs = [Xvnc(width, height, name=f"fanout-{i:02d}") for i in range(count)]
        self.workloads: dict[str, Workload] = {
            x.name: probe_workload(width, height, seconds, rate, phase=i / count)
            for i, x in enumerate(self.xvncs)
        }
        self.painters: dict[str, Painter] = {}
        self.server: processes.ServerProcess | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="thinserve-fanout-"))
        self.batch = 0  # each connecting phase takes addresses of its own

    def start(self) -> None:
        start_many(self.xvncs)
        for xvnc in self.xvncs:
            servercore.pin(xvnc)
        self.painters = {x.name: Painter(x) for x in self.xvncs}

    def stop(self) -> None:
        self.stop_thinserve()
        for painter in self.painters.values():
            painter.close()
        for xvnc in self.xvncs:
            xvnc.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def xvnc_pids(self) -> list[int]:
        return [x.process.pid for x in self.xvncs if x.process is not None]

    async def start_thinserve(self) -> None:
        socket = self.folder / "admin.sock"
        socket.unlink(missing_ok=True)  # the last round's, if its thinserve left it
        server = (
            f'admin_socket = "{socket}"',
            'address_pairing = ["127.0.0.0/8"]',  # terminals known as viewer-ADDR
            "max_unpaired = 5000",
            "max_connections = 5000",
        )
        self.server = processes.thinserve(
            [(x.name, x.port) for x in self.xvncs],
            self.folder,
            server,
            database=self.database,
            extra=self.extra,
        )
        self.server.start()
        if not await wait_for(socket.exists, ADMIN_TIMEOUT):
            raise XvncError(f"thinserve's admin socket {socket} did not appear")

    def stop_thinserve(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def addresses(self, count: int) -> list[str]:
        self.batch += 1
        if self.batch > 250:
            raise XvncError("out of loopback addresses for new terminals")
        return [f"127.{self.batch}.{i // 250}.{i % 250 + 1}" for i in range(count)]

    async def connect(self, count: int) -> list[tuple[MeasuringTerminal, str]]:
        """``count`` terminals, each with the desktop it watches, all showing it."""
        for name, painter in self.painters.items():
            painter.show_initial(self.workloads[name])
        port = self.server.port if self.server is not None else self.xvncs[0].port
        addresses = self.addresses(count)
        terminals = []
        try:
            for address in addresses:
                terminals.append(await connect(port, TIGHT, address))
            watching = await self._watching(terminals, addresses)
            for terminal, name in zip(terminals, watching, strict=True):
                await wait_showing(terminal, self.workloads[name].initial, SHOW_TIMEOUT)
        except BaseException:
            for terminal in terminals:
                terminal.close()
            raise
        await all_settled(terminals)
        return list(zip(terminals, watching, strict=True))

    async def _watching(
        self, terminals: list[MeasuringTerminal], addresses: list[str]
    ) -> list[str]:
        """Which desktop each terminal watches.  On the direct path, the one Xvnc;
        through thinserve, the desktop its pool gave it, or else the desktop with
        the fewest terminals so far, which the admin API lets it watch."""
        if self.server is None:
            return [self.xvncs[0].name] * len(terminals)
        names = [x.name for x in self.xvncs]
        watching = [t.desktop_name if t.desktop_name in names else "" for t in terminals]
        counts = Counter(name for name in watching if name)
        admin = AdminClient(self.folder / "admin.sock")
        for index, address in enumerate(addresses):
            if watching[index]:
                continue
            desktop = min(names, key=lambda name: counts[name])
            try:
                await threads.deferToThread(admin.shadow, f"viewer-{address}", desktop)
            except AdminError as exc:
                raise XvncError(f"could not let {address} watch {desktop}: {exc.message}") from None
            watching[index] = desktop
            counts[desktop] += 1
        return watching

    def replayed(self) -> None:
        """Called as a replay ends, before its terminals leave."""

    async def measure(self, path: str, count: int) -> FanoutRun:
        pairs = await self.connect(count)
        try:
            desktops = {
                name: Desktop(self.painters[name], self.workloads[name])
                for name in sorted({name for _, name in pairs})
            }
            for terminal, name in pairs:
                terminal.tracker = Tracker(self.workloads[name].steps)
                desktops[name].trackers.append(terminal.tracker)
            xvnc = [processes.Meter(pid).start() for pid in self.xvnc_pids]
            ours = processes.Meter(self.server.pid).start() if self.server is not None else None
            generator = processes.Meter(os.getpid()).start()
            late = await replay(list(desktops.values()))
            self.replayed()
            generator_cpu, seconds = generator.read()
            xvnc_cpu = sum(m.read()[0] for m in xvnc)
            thinserve_cpu = ours.read()[0] if ours is not None else None
        finally:
            for terminal, _ in pairs:
                terminal.close()
        trackers = [t.tracker for t, _ in pairs if t.tracker is not None]
        workloads = [d.workload for d in desktops.values()]
        return FanoutRun(
            path,
            count,
            len(desktops),
            tuple(x for t in trackers for x in t.latencies),
            sum(t.shown for t in trackers),
            sum(t.missed for t in trackers),
            sum(len(w.steps) for w in workloads),
            statistics.mean(_span(w) for w in workloads),
            seconds,
            xvnc_cpu,
            thinserve_cpu,
            sorted(late)[int(0.99 * (len(late) - 1))] if late else 0.0,
            generator_cpu / seconds / len(os.sched_getaffinity(0)),
        )


def _span(workload: Workload) -> float:
    """The schedule's length: from the first step to one interval past the last."""
    steps = workload.steps
    if len(steps) < 2:
        return 1.0
    interval = (steps[-1].at - steps[0].at) / (len(steps) - 1)
    return steps[-1].at - steps[0].at + interval


async def all_settled(terminals: list[MeasuringTerminal], most: float = 10.0) -> None:
    """Until no terminal has had an update for ``QUIET`` seconds (at most ``most``)."""
    waited = 0.0
    seen, calm = sum(t.updates for t in terminals), 0.0
    while waited < most and calm < QUIET:
        await sleep(QUIET / 5)
        waited += QUIET / 5
        now = sum(t.updates for t in terminals)
        calm = 0.0 if now != seen else calm + QUIET / 5
        seen = now


async def quiet(pids: list[int], window: float = 0.2, most: float = 10.0) -> None:
    """Until none of ``pids`` uses CPU for ``window`` seconds (at most ``most``): the
    terminals of the last round are gone before the next connects."""
    waited = 0.0
    before = [processes.cpu_seconds(pid) for pid in pids]
    while waited < most:
        await sleep(window)
        waited += window
        now = [processes.cpu_seconds(pid) for pid in pids]
        if now == before:
            return
        before = now


async def one_desktop(options: FanoutOptions, progress: Progress) -> list[FanoutRun]:
    stage = Stage(1, options.size, options.seconds, options.rate)
    runs = []
    try:
        progress("[fanout] starting Xvnc")
        stage.start()
        for number in range(options.rounds):
            order = ("direct", "thinserve") if number % 2 == 0 else ("thinserve", "direct")
            for path in order:
                if path == "thinserve":
                    await stage.start_thinserve()
                progress(f"[fanout] round {number + 1}: {options.terminals} terminals, {path}")
                try:
                    run = await stage.measure(path, options.terminals)
                finally:
                    stage.stop_thinserve()
                await quiet(stage.xvnc_pids)
                progress(_line(run))
                runs.append(run)
    finally:
        stage.stop()
    return runs


async def crowd(options: FanoutOptions, progress: Progress) -> list[FanoutRun]:
    count = options.crowd_desktops
    stage = Stage(count, options.size, options.seconds, options.crowd_rate)
    runs = []
    try:
        progress(f"[fanout] starting {count} Xvnc desktops and thinserve")
        stage.start()
        await stage.start_thinserve()
        assert stage.server is not None
        for number in range(options.rounds):
            terminals = options.crowd_terminals
            progress(
                f"[fanout] crowd round {number + 1}: {terminals} terminals on {count} desktops"
            )
            run = await stage.measure("thinserve", terminals)
            await quiet([stage.server.pid, *stage.xvnc_pids])
            progress(_line(run))
            runs.append(run)
    finally:
        stage.stop()
    return runs


def _line(run: FanoutRun) -> str:
    return (
        f"[fanout] {run.path}: p50 {run.latency_ms(0.5):.1f} ms, "
        f"p99 {run.latency_ms(0.99):.1f} ms, servers {run.share(run.server_cpu):.0%} of a core, "
        f"this process {run.generator_share:.0%}"
    )


async def run(options: FanoutOptions, progress: Progress) -> FanoutResult:
    runs = await one_desktop(options, progress)
    return FanoutResult(options, runs, await crowd(options, progress))
