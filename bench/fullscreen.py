"""What a full-screen update costs: Xvnc serving it directly, thinserve from its copy.

One 1920x1080 Xvnc desktop shows each content in turn, drawn on its root
window (``probe`` and ``text-heavy`` from ``bench/probescene.py``,
``windows`` and ``photo`` from ``bench/content.py``).  thinserve runs as
its own process (``bench/serverproc.py``, as in the relay suite) in front
of it.  Neither server is pinned: a full screen is where thinserve
prepares rectangles on every core (Xvnc encodes on one thread whatever it
is given), and the measuring client only decodes once an update has
arrived whole (``bench/fullcapture.py``), so it competes with neither.
For every content and terminal profile, the two paths are visited
alternately, direct then thinserve, then the other way round, for
``rounds`` rounds after an untimed warm-up; each visit is
:func:`bench.fullcapture.visit`: a fresh connection's first full update
and a refresh on the same connection, timed to the first rectangle, the
last byte and the update decoded.  Before each connection the content is
painted anew, moved by a few pixels (:class:`Pictures`), so no first
update can come from work thinserve kept for an earlier terminal.

Plain processes and blocking sockets: no reactor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocols.rfb.encodings import Rect

from . import content, fullcapture, probescene, processes
from .options import FullscreenOptions
from .terminal import PROFILES
from .xvnc import Xvnc

Progress = Callable[[str], None]
CONTENTS: dict[str, Callable[[int, int], np.ndarray]] = {
    "probe": probescene.probe,
    "text-heavy": probescene.text_heavy,
    "windows": content.desktop_windows,
    "photo": content.photo,
}
PATHS = ("direct", "thinserve")
UPDATES = ("fresh", "refresh")
MIRROR_TIMEOUT = 20.0  # seconds for thinserve's copy to show a new picture
VARIANTS = 3  # pictures per content, painted in turn
STRIP_ROWS = 16  # rows of the strip that tells whether thinserve's copy is current

Key = tuple[str, str, str, str]  # content, profile key, path, update


@dataclass
class FullscreenResult:
    options: FullscreenOptions
    pinned: bool  # Xvnc shares core 0 with thinserve (else both use every core)
    samples: dict[Key, list[fullcapture.Sample]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, profile: str, path: str, visit: fullcapture.Visit) -> None:
        for update, sample in zip(UPDATES, (visit.fresh, visit.refresh), strict=True):
            self.samples.setdefault((name, profile, path, update), []).append(sample)


def _paths(round_number: int) -> tuple[str, ...]:
    """Direct first in even rounds, thinserve first in odd ones."""
    return PATHS if round_number % 2 == 0 else PATHS[::-1]


class Pictures:
    """A content moved by a few pixels, three ways, painted in turn before every connection.

    Each connection so gets a picture no terminal has been sent: thinserve
    may keep the work of encoding a picture for the next terminal that asks
    for it, and a first update must not be timed from that.  The moves (3
    rows and 5 columns, wrapping round) put other pixels in every tile and
    block an encoder works on, and leave what it has to do the same; with
    three pictures and two connections per visit, each connection sees
    each picture in turn.  After painting, thinserve's copy of the
    desktop must show the new picture (checked on a strip of rows, so no
    full-screen update is made for it) and both servers must be quiet.
    """

    def __init__(self, xvnc: Xvnc, frame: np.ndarray, mirror_port: int, pids: list[int]) -> None:
        self.xvnc = xvnc
        self.variants = [np.roll(frame, (k * 3, k * 5), axis=(0, 1)) for k in range(VARIANTS)]
        self.mirror_port = mirror_port
        self.pids = pids
        self.turn = 0
        rows = np.min(
            [(self.variants[k - 1] != self.variants[k]).sum(axis=1) for k in range(VARIANTS)],
            axis=0,
        )  # rows where every picture differs from the one before it
        top = min(int(np.argmax(rows)), frame.shape[0] - STRIP_ROWS)
        self.strip = Rect(0, top, frame.shape[1], STRIP_ROWS)

    def new_picture(self) -> np.ndarray:
        self.turn += 1
        frame = self.variants[self.turn % VARIANTS]
        self.xvnc.draw(frame)
        deadline = time.monotonic() + MIRROR_TIMEOUT
        while not fullcapture.strip_shows(self.mirror_port, self.xvnc.name, frame, self.strip):
            if time.monotonic() > deadline:
                raise fullcapture.CaptureError("thinserve's copy did not follow the new picture")
            time.sleep(0.05)
        quiet(self.pids)
        return frame


def quiet(pids: list[int], window: float = 0.1, most: float = 3.0) -> None:
    """Wait until none of ``pids`` uses CPU for ``window`` seconds (at most ``most``)."""
    deadline = time.monotonic() + most
    before = [processes.cpu_seconds(pid) for pid in pids]
    while time.monotonic() < deadline:
        time.sleep(window)
        now = [processes.cpu_seconds(pid) for pid in pids]
        if now == before:
            return
        before = now


def measure_content(
    name: str,
    xvnc: Xvnc,
    ports: dict[str, int],
    pids: list[int],
    result: FullscreenResult,
    progress: Progress,
) -> None:
    options = result.options
    frame = CONTENTS[name](xvnc.width, xvnc.height)
    pictures = Pictures(xvnc, frame, ports["thinserve"], pids)
    for key in options.profiles:
        for _ in range(options.warmup):
            for path in PATHS:
                fullcapture.visit(ports[path], xvnc.name, PROFILES[key], pictures.new_picture)
    for number in range(options.rounds):
        progress(f"[fullscreen] {name}: round {number + 1} of {options.rounds}")
        for key in options.profiles:
            for path in _paths(number):
                visit = fullcapture.visit(
                    ports[path], xvnc.name, PROFILES[key], pictures.new_picture
                )
                result.add(name, key, path, visit)


def run(options: FullscreenOptions, progress: Progress) -> FullscreenResult:
    width, height = options.size
    started = time.monotonic()
    xvnc = Xvnc(width, height, name="fullscreen")
    progress(f"[fullscreen] starting Xvnc at {width}x{height} and thinserve")
    xvnc.start()
    server = processes.thinserve([(xvnc.name, xvnc.port)], pinned=False)
    try:
        result = FullscreenResult(options, False)
        server.start()
        ports = {"direct": xvnc.port, "thinserve": server.port}
        pids = [server.pid, *([xvnc.process.pid] if xvnc.process else [])]
        for name in options.contents:
            measure_content(name, xvnc, ports, pids, result, progress)
    finally:
        server.stop()
        xvnc.stop()
    result.seconds = time.monotonic() - started
    return result
