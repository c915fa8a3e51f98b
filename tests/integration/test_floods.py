"""Floods against a real thinserve process: unpaired connections cost little,
the paired terminal keeps its updates, and connections past a cap are told why.

thinserve runs as its own process, so its memory is its own; the flood comes
from hundreds of loopback source addresses (bench/floodpeer.py).  Every wait
is on a condition; the only ratio asserted (update rate during the flood
against before it) is taken in the same run, with a generous factor.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from bench.floodpeer import Flood, flood, sources
from tests.support.ports import free_tcp_port
from tests.support.procs import spawn
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from tests.support.xscreen import paint_root
from thinserve.admin.client import AdminClient

pytestmark = pytest.mark.integration

WARM_UP, MEASURED, TURNED_AWAY = 60, 300, 60
UNPAIRED_CAP = WARM_UP + MEASURED
PER_ADDRESS = 3
# Memory a waiting connection may cost thinserve. Each used to hold its own
# 1024x768 pairing screen, 3 MiB; the cap leaves room for Python's own
# bookkeeping of a connection, a session and a broker record.
MAX_BYTES_PER_UNPAIRED = 200 * 1024
RATE_FACTOR = 4.0  # the paired terminal's update rate may drop at most this much


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def config_text(port: int, xvnc_port: int, tmp: Path) -> str:
    return f"""
[server]
listen = ["tcp:port={port}:interface=127.0.0.1"]
web_listen = []
database = "{tmp / "thinserve.db"}"
admin_socket = "{tmp / "admin.sock"}"
address_pairing = ["127.0.0.2/32"]
max_unpaired = {UNPAIRED_CAP}
max_per_address = {PER_ADDRESS}
[discovery]
enabled = false
[[desktop]]
name = "d1"
address = "127.0.0.1:{xvnc_port}"
"""


class Painter:
    """Repaints the desktop, alternating two frames, until stopped (in a thread)."""

    def __init__(self, display: str, size: tuple[int, int]) -> None:
        width, height = size
        self.frames = [np.full((height, width), c, dtype=np.uint32) for c in (0x204080, 0x806020)]
        self.display = display
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 240  # bounded, whatever happens
        for frame in itertools.cycle(self.frames):
            if time.monotonic() > deadline:
                return
            paint_root(self.display, frame)
            if self.stopped.wait(0.05):  # the desktop's own pace, 20 frames a second
                return


async def update_rate(term: Terminal, updates: int = 20) -> float:
    """Updates per second the paired terminal decodes while the desktop changes."""
    start, began = term.updates, time.monotonic()
    await wait_until(lambda: term.updates >= start + updates, 120, f"{updates} updates")
    return updates / (time.monotonic() - began)


@pytest_twisted.ensureDeferred
async def test_a_flood_costs_little_and_the_paired_terminal_keeps_updating(
    xvnc, tmp_path: Path
) -> None:
    desktop = xvnc(size=(320, 240))
    port = free_tcp_port()
    config = tmp_path / "thinserve.toml"
    config.write_text(config_text(port, desktop.port, tmp_path))
    log = tmp_path / "thinserve.log"
    argv = [sys.executable, "-m", "thinserve.cli", "serve", "--config", str(config)]
    server = spawn([*argv, "--state-dir", str(tmp_path / "state")], log)
    painter = Painter(desktop.display_name, (320, 240))
    term = Terminal()
    floods: list[Flood] = []
    try:
        await wait_until(lambda: (tmp_path / "admin.sock").exists(), 60, "thinserve to start")
        admin = AdminClient(str(tmp_path / "admin.sock"))
        await threads.deferToThread(admin.pair, "viewer-127.0.0.2", "d1", True, True)
        await term.connect(port, source="127.0.0.2")
        threads.deferToThread(painter.run)
        before_rate = await update_rate(term)

        # Warm up (the shared screen cache, the allocator), then measure what
        # each further waiting connection costs.
        first = await flood(reactor, port, sources(WARM_UP, "127.3"), lambda: None)
        floods.append(first)
        await wait_until(lambda: first.count("updated") == WARM_UP, 120, "the first wave")
        warm_rss = rss_bytes(server.pid)
        rate = defer.ensureDeferred(update_rate(term))  # while the next waves arrive
        second = await flood(reactor, port, sources(MEASURED, "127.5"), lambda: None)
        floods.append(second)
        await wait_until(lambda: second.count("updated") == MEASURED, 120, "the second wave")
        per_connection = (rss_bytes(server.pid) - warm_rss) / MEASURED
        # The cap is reached: more unpaired terminals see "server busy", then close.
        third = await flood(reactor, port, sources(TURNED_AWAY, "127.6"), lambda: None)
        floods.append(third)
        during_rate = await rate
        print(f"RSS per unpaired connection: {per_connection / 1024:.0f} KiB")
        print(f"paired terminal: {before_rate:.1f} updates/s before, {during_rate:.1f} during")
        assert per_connection < MAX_BYTES_PER_UNPAIRED
        assert during_rate * RATE_FACTOR >= before_rate, (before_rate, during_rate)
        try:
            await wait_until(lambda: third.count("closed") == TURNED_AWAY, 60, "the third wave")
        except AssertionError:
            stages = Counter(p.stage for p in third.peers)
            raise AssertionError(f"third wave: {dict(stages)}") from None
        assert first.count("updated") == WARM_UP and second.count("updated") == MEASURED

        crowd = await flood(reactor, port, ["127.4.0.1"] * (PER_ADDRESS + 1), lambda: None)
        await wait_until(lambda: crowd.count("refused") == 1, 30, "the connection past the cap")
        (refused,) = [p for p in crowd.peers if p.stage == "refused"]
        assert refused.reason == f"Too many connections from 127.4.0.1 ({PER_ADDRESS}); " + (
            "close one and try again."
        )
        crowd.close()
        text = log.read_text()
        assert "refused a connection from 127.4.0.1: Too many connections" in text
        assert "already wait to be paired (max_unpaired)" in text
        assert term.proto is not None and not term.closed  # never the paired terminal
    finally:
        painter.stopped.set()
        for wave in floods:
            wave.close()
        term.close()
        server.stop()
