"""thinserve for the flood and soak benchmarks: caps, pairing by address, /proc vitals.

thinserve runs as its own process (bench/serverproc.py, pinned to core 0
as in the relay suite) with a configuration the benchmark writes: the
default broker (unknown terminals see a pairing code and wait), a
database file and an admin socket in a temporary folder, the benchmark's
own terminals' addresses in ``address_pairing``, and the connection caps
of the run.  The benchmark pairs its terminals through the admin API
(``AdminClient.pair(..., new=True, by_address=True)``), as an
administrator would.  A :class:`Vitals` sampler reads thinserve's resident
memory (VmRSS), open file descriptors (/proc/PID/fd) and CPU time.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import task, threads

from thinserve.admin.client import AdminClient, AdminError

from . import processes
from .replay import wait_for
from .xvnc import XvncError, free_port

ADMIN_TIMEOUT = 30.0


def config_toml(
    port: int,
    folder: Path,
    desktops: list[tuple[str, int]],
    address_pairing: list[str],
    caps: dict[str, int],
) -> str:
    """The configuration: ``desktops`` ((name, Xvnc port) each), ``caps`` the
    [server] limits (max_unpaired, max_per_address, max_connections)."""
    subnets = ", ".join(f'"{subnet}"' for subnet in address_pairing)
    lines = [
        "[server]",
        f'listen = ["tcp:port={port}:interface=127.0.0.1"]',
        "web_listen = []",
        f'database = "{folder / "thinserve.db"}"',
        f'admin_socket = "{folder / "admin.sock"}"',
        f"address_pairing = [{subnets}]",
        *(f"{key} = {value}" for key, value in caps.items()),
        "",
        "[discovery]",
        "enabled = false",
    ]
    for name, desktop_port in desktops:
        lines += ["", "[[desktop]]", f'name = "{name}"', f'address = "127.0.0.1:{desktop_port}"']
    return "\n".join(lines) + "\n"


class Server:
    """thinserve with the run's configuration, and its admin API."""

    def __init__(
        self,
        folder: Path,
        desktops: list[tuple[str, int]],
        address_pairing: list[str],
        caps: dict[str, int],
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = config_toml(self.port, folder, desktops, address_pairing, caps)
        path = folder / "thinserve.toml"
        path.write_text(self.config)
        self.process = processes.ServerProcess(
            [sys.executable, "-m", "bench.serverproc", str(path)], self.port
        )
        self.admin = AdminClient(folder / "admin.sock")

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> None:
        self.process.start()
        socket = self.folder / "admin.sock"
        if not await wait_for(socket.exists, ADMIN_TIMEOUT):
            raise XvncError(f"thinserve's admin socket {socket} did not appear")

    async def pair(self, address: str, desktop: str) -> None:
        """Pair the keyless viewer at ``address`` with ``desktop``, by address."""
        terminal = f"viewer-{address}"
        try:
            await threads.deferToThread(self.admin.pair, terminal, desktop, True, True)
        except AdminError as exc:
            raise XvncError(
                f"could not pair {terminal} with {desktop} through the admin API: "
                f"{exc.message} ({exc.hint or 'see thinserve log'})"
            ) from None

    def stop(self) -> None:
        self.process.stop()


@dataclass(frozen=True)
class Sample:
    at: float  # perf_counter
    rss: int  # bytes
    fds: int
    cpu: float  # CPU seconds so far
    label: str  # what the benchmark was doing


@dataclass
class Vitals:
    """thinserve's memory, descriptors and CPU, sampled every ``every`` seconds."""

    pid: int
    every: float = 0.25
    label: str = ""
    samples: list[Sample] = field(default_factory=list)
    _loop: task.LoopingCall | None = None

    MAX_SAMPLES = 50_000  # a 30-minute soak at 0.25 s makes 7 200

    def sample(self) -> Sample:
        try:
            reading = Sample(
                time.perf_counter(),
                processes.rss_bytes(self.pid),
                processes.open_fds(self.pid),
                processes.cpu_seconds(self.pid),
                self.label,
            )
        except OSError:  # the process has ended
            reading = Sample(time.perf_counter(), 0, 0, 0.0, self.label)
        if len(self.samples) < self.MAX_SAMPLES:
            self.samples.append(reading)
        return reading

    def start(self) -> Vitals:
        self._loop = task.LoopingCall(self.sample)
        self._loop.start(self.every)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def labelled(self, label: str) -> list[Sample]:
        return [s for s in self.samples if s.label == label]

    def since(self, at: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= at]
