"""Replaying workloads on desktops while terminals watch.

The steps of every desktop's workload are painted at their scheduled
times, in one time-ordered loop, by this process; after each paint the
trackers of the terminals watching that desktop learn the step and the
moment it was painted.  Painting and decoding share this process's event
loop, so no update can be decoded before its paint has been recorded.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from twisted.internet import reactor, task

from .painter import Painter
from .terminal import MeasuringTerminal, Tracker
from .workloads import Workload, channel_difference

LEAD = 0.2  # seconds between starting the loop and the first step
SETTLE = 3.0  # seconds to wait after the last step for its update


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, max(0.0, seconds), lambda: None)


async def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await sleep(0.01)
    return True


@dataclass
class Desktop:
    """A desktop being replayed on, and the trackers of its terminals."""

    painter: Painter
    workload: Workload
    trackers: list[Tracker] = field(default_factory=list)


async def replay(desktops: list[Desktop]) -> list[float]:
    """Paint every desktop's steps on schedule; return how late each paint was (s)."""
    events = sorted(
        (step.at, d, i)
        for d, desktop in enumerate(desktops)
        for i, step in enumerate(desktop.workload.steps)
    )
    start = time.perf_counter() + LEAD
    late = []
    for at, d, i in events:
        await sleep(start + at - time.perf_counter())  # yields to the reactor even when late
        desktop = desktops[d]
        painted = desktop.painter.paint(desktop.workload.steps[i].ops)
        late.append(painted - (start + at))
        for tracker in desktop.trackers:
            tracker.painted(i, painted)
    await wait_for(lambda: all(not t.pending for d in desktops for t in d.trackers), SETTLE)
    return late


QUIET = 0.25  # seconds without an update that count as settled


async def wait_showing(terminal: MeasuringTerminal, frame: np.ndarray, timeout: float = 15) -> None:
    """Wait until the terminal shows ``frame`` (near enough for lossy encodings)."""

    def close() -> bool:
        fb = terminal.conn.framebuffer
        return fb.shape == frame.shape and channel_difference(fb[::4], frame[::4]) < 3.0

    if not await wait_for(close, timeout):
        raise TimeoutError(f"the terminal did not show the first frame within {timeout:.0f} s")


async def settled(terminal: MeasuringTerminal, quiet: float = QUIET, most: float = 3.0) -> None:
    """Wait until no update has come for ``quiet`` seconds (at most ``most`` seconds).

    A server may still be sending the last of the first frame (thinserve's
    copy of the desktop can trail the desktop by an update): those bytes
    belong to no step and must not be counted.
    """
    deadline = time.perf_counter() + most
    seen, since = terminal.updates, time.perf_counter()
    while time.perf_counter() < deadline:
        await sleep(quiet / 5)
        if terminal.updates != seen:
            seen, since = terminal.updates, time.perf_counter()
        elif time.perf_counter() - since >= quiet:
            return
