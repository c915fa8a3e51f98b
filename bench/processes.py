"""The relays as separate processes, and what /proc says they cost.

Both relays (thinserve, the byte relay) run as their own process, so
their CPU time (``utime + stime`` from /proc/PID/stat, all threads) and
resident memory (``VmRSS`` from /proc/PID/status) are theirs alone.  On a
machine with two or more cores the relay is pinned to core 0 and the
benchmark's own process (painting, terminals, and the Xvnc desktops it
starts) to the other cores, so the relay is measured on one core of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .xvnc import XvncError, _port_open, free_port

START_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RELAY_CORE = 0


def pin_benchmark() -> bool:
    """Keep this process (and what it starts later) off the relay's core."""
    cores = os.sched_getaffinity(0)
    others = cores - {RELAY_CORE}
    if RELAY_CORE not in cores or not others:
        return False
    os.sched_setaffinity(0, others)
    return True


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open (its /proc/PID/fd entries)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    last_words: Callable[[], str],
    stop: Callable[[], None],
    *,
    timeout: float = START_TIMEOUT,
    late: str = "did not answer",
) -> None:
    """Until ``ready()``: XvncError if ``process`` exits first (with
    ``last_words()``) or after ``timeout`` seconds (then ``stop()`` first)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise XvncError(f"{what} exited: {last_words()}")
        if time.monotonic() > deadline:
            stop()
            raise XvncError(f"{what} {late} within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Meter:
    """CPU seconds of a process over an interval of wall time."""

    pid: int
    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> Meter:
        self.cpu, self.wall = cpu_seconds(self.pid), time.perf_counter()
        return self

    def read(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since ``start``."""
        return cpu_seconds(self.pid) - self.cpu, time.perf_counter() - self.wall


class ServerProcess:
    """A relay process listening on a loopback port, pinned to the relay core."""

    def __init__(self, args: list[str], port: int, pinned: bool = True) -> None:
        self.args = args
        self.port = port
        self.pinned = pinned  # False: free to use every core
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (its stderr, kept open while it runs)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log
        )
        atexit.register(self.stop)
        if self.pinned:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.process.pid, {RELAY_CORE})
        wait_started(
            self.process,
            lambda: _port_open(self.port),
            self.args[2],
            lambda: self.errors()[-500:],
            self.stop,
            late="did not listen",
        )

    def errors(self) -> str:
        """What the process wrote to standard error so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip()

    def stop(self) -> None:
        atexit.unregister(self.stop)
        end(self.process)
        self.process = None


def end(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``process`` if it still runs; kill it if it lingers 10 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def byte_relay(target_port: int) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "bench.byterelay", str(port), str(target_port)]
    return ServerProcess(args, port)


def thinserve(
    desktops: list[tuple[str, int]],
    workdir: Path | None = None,
    server: tuple[str, ...] = (),
    pinned: bool = True,
    database: str | None = ":memory:",
    extra: str = "",
) -> ServerProcess:
    """thinserve serving ``desktops`` ((name, Xvnc port) each), every terminal
    getting the first free one; ``server``: more lines for its [server] table;
    ``pinned`` False: on every core rather than the relay's; ``database`` as
    config_toml takes it; ``extra``: more TOML at the end (a [cluster] table)."""
    port = free_port()
    folder = workdir or Path(tempfile.mkdtemp(prefix="thinserve-bench-"))
    config = folder / "thinserve.toml"
    config.write_text(config_toml(port, desktops, server, database) + extra)
    args = [sys.executable, "-m", "bench.serverproc", str(config)]
    return ServerProcess(args, port, pinned)


def config_toml(
    port: int,
    desktops: list[tuple[str, int]],
    server: tuple[str, ...] = (),
    database: str | None = ":memory:",
) -> str:
    """``database`` None: thinserve's own, in its state directory."""
    names = ", ".join(f'"{name}"' for name, _ in desktops)
    lines = [
        "[server]",
        f'listen = ["tcp:port={port}:interface=127.0.0.1"]',
        *([f"database = {json.dumps(database)}"] if database else []),
        *server,
        "",
        "[discovery]",
        "enabled = false",
        "",
        "[broker]",
        'unknown_terminal = "pool"',
        'default_pool = "all"',
        "",
        "[broker.pools]",
        f"all = [{names}]",
    ]
    for name, desktop_port in desktops:
        lines += ["", "[[desktop]]", f'name = "{name}"', f'address = "127.0.0.1:{desktop_port}"']
    return "\n".join(lines) + "\n"


class LineProcess:
    """A helper process of the benchmark (``python -m bench.NAME ...``) that
    reports JSON objects, one a line, on stdout and reads commands, one a
    line, on stdin.  A thread keeps every report; ``last(event)`` is the
    newest report of that ``event``.  ``stop`` closes its stdin (the helper
    ends by itself), then terminates it if it lingers."""

    MAX_REPORTS = 100_000  # older reports are dropped past this

    def __init__(self, module: str, args: list[str]) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.reports: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (its stderr, kept open while it runs)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        atexit.register(self.stop)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if not isinstance(report, dict):
                continue
            with self._lock:
                self.reports.append(report)
                del self.reports[: -self.MAX_REPORTS]
                self.latest[str(report.get("event", ""))] = report

    def last(self, event: str) -> dict[str, Any] | None:
        with self._lock:
            return self.latest.get(event)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, command: str) -> None:
        """One command line to the helper; ignored once it has ended."""
        if self.process is None or self.process.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip()

    def stop(self, timeout: float = 15.0) -> None:
        atexit.unregister(self.stop)
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end(process)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.process = None
