"""The adaptive benchmark's runs (bench/adaptive.py says what is measured).

Imported once the asyncio reactor is installed: thinserve runs in this
process, its desktop a bench Xvnc reached through a Unix socket (network
namespaces do not separate those), so its terminal port can sit in a
namespace while the desktop stays outside.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from twisted.internet import endpoints, protocol, reactor, task

from tests.support.netns import Lan, NetNamespace
from tests.support.shaping import shape
from thinserve import rfbclient
from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig
from thinserve.relay.bandwidth import LinkQuality
from thinserve.relay.session import TerminalSession
from thinserve.service import ThinServe

from .adaptiveterm import Viewer
from .content import desktop_windows, photo
from .processes import LineProcess
from .xvnc import Xvnc

LINK = 2_000_000  # bits per second each way in the slow-link setting
PAINT_EVERY = 0.1  # seconds between new pictures on the desktop
SAMPLE_EVERY = 0.1  # seconds between looks at the session's quality
PHOTOS = 6  # different pictures, shown in turn
BUSY_SOURCE = "127.0.0.7"  # the busy terminal's address
TERMINAL_HOST = 2  # the slow-link terminal's host number on its LAN
WAIT = 30.0  # seconds a terminal may take to connect
ESTIMATORS = ("TCP_INFO", "timed answers")
EVERY_TERMINAL_ON_D1 = BrokerConfig(
    unknown_terminal="pool", pools={"all": ("d1",)}, default_pool="all"
)
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"

T = TypeVar("T")
Counters = Callable[[], tuple[int, int]]  # the terminal's (updates, bytes received) so far
Progress = Callable[[str], None]


@dataclass
class Run:
    """One terminal watching photos for a while, and what its session did."""

    setting: str
    estimator: str
    seconds: float = 0.0
    changes: list[tuple[float, int | None]] = field(default_factory=list)  # (time, level)
    frames: int = 0  # updates the terminal decoded
    received: int = 0  # bytes

    def levels(self) -> str:
        return ", ".join(
            f"{level}" if at == 0 else f"{level} ({at:.1f} s)" for at, level in self.changes
        )

    def first_change(self) -> str:
        if len(self.changes) < 2:
            return "none"
        at, level = self.changes[1]
        return f"{at:.1f} s, to {level}"


class Painter:
    """A thread putting the next photo on the desktop every PAINT_EVERY seconds."""

    def __init__(self, xvnc: Xvnc, frames: list[np.ndarray]) -> None:
        self.xvnc = xvnc
        self.frames = frames
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._paint, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _paint(self) -> None:
        shown = 0
        while not self.stopping.wait(PAINT_EVERY):
            self.xvnc.draw(self.frames[shown % len(self.frames)])
            shown += 1

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


@dataclass
class Bench:
    xvnc: Xvnc
    workdir: Path
    seconds: float  # per run
    terminal_cpu: int  # the busy terminal's core (thinserve and Xvnc keep off it)
    progress: Progress
    runs: list[Run] = field(default_factory=list)

    def __post_init__(self) -> None:
        size = (self.xvnc.width, self.xvnc.height)
        self.frames = [photo(*size, seed=seed) for seed in range(1, PHOTOS + 1)]
        self.windows = desktop_windows(*size)  # what the desktop shows when a terminal connects

    async def run(self) -> None:
        for estimator in ESTIMATORS:
            self.progress(f"[adaptive] loopback, terminal CPU saturated: {estimator}")
            self.runs.append(await self.busy_terminal(estimator))
        problem = link_problem()
        if problem is not None:
            self.progress(f"[adaptive] the 2 Mbit/s link is skipped: {problem}")
            return
        with shaped_lan() as (lan, qdisc):
            for estimator in ESTIMATORS:
                self.progress(f"[adaptive] 2 Mbit/s link ({qdisc}): {estimator}")
                self.runs.append(await self.slow_link(lan, qdisc, estimator))

    async def thinserve(self, netns: NetNamespace | None = None, subnet: str = "") -> ThinServe:
        """A fresh thinserve on the desktop, which shows windows again (light to
        send, unlike the photos); its terminal port in ``netns`` if given."""
        self.xvnc.draw(self.windows)
        desktops = (DesktopConfig("d1", f"unix:{self.workdir / 'xvnc.sock'}"),)
        pairing = ("127.0.0.0/8", f"{subnet}.0/24") if subnet else ("127.0.0.0/8",)
        config = Config(
            listen=("tcp:port=0",) if netns else ("tcp:port=0:interface=127.0.0.1",),
            web_listen=(),
            dashboard_listen=(),
            admin_socket="",
            database=":memory:",
            broker=BrokerConfig(
                unknown_terminal="pool", pools={"all": ("d1",)}, default_pool="all"
            ),
            discovery=False,
            allow_none="all",  # plain RFB also on the LAN: the client stays simple
            address_pairing=pairing,
            desktops=desktops,
            local_desktops=(),
            state_dir=self.workdir / "state",
            runtime_dir=self.workdir / "run",
            source="bench",
        )
        ts = ThinServe(config, reactor)
        with netns.entered() if netns is not None else contextlib.nullcontext():
            await ts.startService()
        return ts

    async def busy_terminal(self, estimator: str) -> Run:
        ts = await self.thinserve()
        cpu = str(self.terminal_cpu)
        terminal = LineProcess("bench.adaptiveterm", [str(ts.port_numbers[0]), BUSY_SOURCE, cpu])
        terminal.start()
        hog: subprocess.Popen[bytes] | None = None

        def counters() -> tuple[int, int]:
            last = terminal.last("update") or {}
            return int(last.get("updates", 0)), int(last.get("bytes", 0))

        try:
            await wait_for(lambda: counters()[0] > 0, "the terminal's first update")
            hog = subprocess.Popen([sys.executable, "-c", HOG, cpu])  # from now on it is busy
            run = await self.measure(ts, BUSY_SOURCE, estimator, counters)
        finally:
            if hog is not None:  # first: the terminal then ends at once
                hog.terminate()
                hog.wait(timeout=10)
            terminal.stop()
            await ts.stopService()
        run.setting = "loopback, terminal CPU saturated"
        return run

    async def slow_link(self, lan: Lan, qdisc: str, estimator: str) -> Run:
        ts = await self.thinserve(lan.server, lan.subnet)
        source = lan.address(TERMINAL_HOST)
        viewer = Viewer()
        description = rfbclient.tcp(lan.server_address, ts.port_numbers[0])
        endpoint = endpoints.clientFromString(reactor, f"{description}:bindAddress={source}")
        with lan.hosts["term"].entered():  # the socket is made now, in the namespace
            connecting = endpoint.connect(protocol.Factory.forProtocol(lambda: viewer))
        try:
            await connecting
            run = await self.measure(
                ts, source, estimator, lambda: (viewer.updates, viewer.received)
            )
        finally:
            if viewer.link is not None:
                viewer.link.loseConnection()
            await ts.stopService()
        run.setting = f"2 Mbit/s link ({qdisc})"
        return run

    async def measure(self, ts: ThinServe, source: str, estimator: str, counters: Counters) -> Run:
        """Photos for ``seconds``; the session's levels and the terminal's counts."""
        session = await wait_for(lambda: live_session(ts, source), "the terminal's session")
        await wait_for(lambda: counters()[0] > 0, "the terminal's first update")
        if estimator != "TCP_INFO":  # TCP_INFO hidden: the session times the answers
            session.link = LinkQuality(
                lambda: None if session.proto is None else session.proto.transport,
                lambda transport: None,
            )
        run = Run("", estimator, changes=[(0.0, quality(session))])
        frames, received = counters()
        painter = Painter(self.xvnc, self.frames)
        start = time.monotonic()
        painter.start()
        try:
            while (elapsed := time.monotonic() - start) < self.seconds:
                level = quality(session)
                if level != run.changes[-1][1]:
                    run.changes.append((elapsed, level))
                await task.deferLater(reactor, SAMPLE_EVERY, lambda: None)
        finally:
            painter.stop()
        run.seconds = time.monotonic() - start
        end_frames, end_received = counters()
        run.frames, run.received = end_frames - frames, end_received - received
        return run


def live_session(ts: ThinServe, source: str) -> TerminalSession | None:
    hub = ts.hub
    entry = None if hub is None else hub.terminals.get(f"viewer-{source}")
    return None if entry is None or entry.session.proto is None else entry.session


def quality(session: TerminalSession) -> int | None:
    """The JPEG quality level the session encodes with now."""
    return None if session.proto is None else session.proto.conn.jpeg_quality


async def wait_for(check: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {WAIT:.0f} s")
        await task.deferLater(reactor, 0.05, lambda: None)
    return found


def link_problem() -> str | None:
    """Why the slow link cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (apt-get install iproute2)" if missing else None


@contextlib.contextmanager
def shaped_lan() -> Iterator[tuple[Lan, str]]:
    """A LAN of namespaces whose terminal ``term`` is behind a 2 Mbit/s link; the qdisc."""
    lan = Lan(f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}", prefix="tsab")
    try:
        lan.create()
        lan.add_host("term", TERMINAL_HOST)
        qdisc = shape(lan.server, "lan-term", LINK)
        shape(lan.hosts["term"], "eth0", LINK)
        yield lan, qdisc
    finally:
        lan.delete()


def render(bench: Bench) -> list[str]:
    lines = [
        "## Adaptive JPEG quality",
        "",
        f"A terminal asking for Tight at JPEG quality level 9; {bench.xvnc.width}x"
        f"{bench.xvnc.height} photos, a new one every {PAINT_EVERY:.1f} s, "
        f"{bench.seconds:.0f} s per run.",
        "",
        "| setting | estimator | first change | levels (from) | frames/s | KB/frame |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in bench.runs:
        fps = run.frames / run.seconds if run.seconds else 0.0
        per_frame = run.received / run.frames / 1000 if run.frames else 0.0
        lines.append(
            f"| {run.setting} | {run.estimator} | {run.first_change()} | {run.levels()} "
            f"| {fps:.1f} | {per_frame:.0f} |"
        )
    return lines
