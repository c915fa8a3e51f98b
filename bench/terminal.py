"""The measuring terminal: thinserve's own client, timing when steps show up.

A :class:`MeasuringTerminal` connects (to Xvnc directly, through the byte
relay, or through thinserve: the same code on every path), asks for a
profile of encodings and keeps one incremental update request outstanding,
as classic viewers do.  It counts the bytes it receives and the updates it
decodes.  A :class:`Tracker` per terminal knows which workload steps have
been painted on its desktop and when; after every decoded update it checks,
newest first, whether the framebuffer now shows a painted step's probe.
When step *j* shows, every earlier step still waiting is also delivered
(its pixels were merged into a later update): each gets the latency
"decoded now minus painted then".

Lossy encodings never match a probe exactly, so a step also counts as shown
when the decoded pixels differ from the probe by less than half of what
the step changed (both as mean channel differences).

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.failure import Failure

from protocols.rfb.client import ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding, SecurityType
from protocols.rfb.encodings import Rect
from thinserve import rfbclient

from .workloads import Step, channel_difference

PSEUDO = (
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
    Encoding.LAST_RECT,
)


@dataclass(frozen=True)
class Profile:
    """What a terminal asks for in SetEncodings."""

    name: str
    encodings: tuple[int, ...]


TIGHT = Profile(
    "Tight q8",
    (
        Encoding.TIGHT,
        Encoding.COPYRECT,
        Encoding.ZRLE,
        Encoding.HEXTILE,
        Encoding.RAW,
        Encoding.JPEG_QUALITY_0 + 8,
        Encoding.COMPRESS_LEVEL_0 + 2,
        *PSEUDO,
    ),
)
ZRLE = Profile("ZRLE", (Encoding.ZRLE, Encoding.COPYRECT, Encoding.HEXTILE, Encoding.RAW, *PSEUDO))
PROFILES = {"tight": TIGHT, "zrle": ZRLE}

# Security type None on every path, even where thinserve offers VeNCrypt too
# (rfbclient's default would pick VeNCrypt first); bench/tlscost.py asks for TLS.
PLAIN = rfbclient.ClientOptions(methods=(SecurityType.NONE,))


def shows(step: Step, fb: np.ndarray) -> bool:
    """Whether ``fb`` shows what ``step`` drew (exactly, or near enough if lossy)."""
    error, size = 0.0, 0
    for probe in step.probes:
        sample = probe.sample(fb)
        if sample.shape != probe.expected.shape:
            return False
        if not np.array_equal(sample, probe.expected):
            error += channel_difference(sample, probe.expected) * sample.size
        size += sample.size
    return error == 0.0 or 2 * error / max(1, size) < step.change


@dataclass
class Tracker:
    """Painted steps of one desktop as one terminal sees them."""

    steps: Sequence[Step]
    pending: list[tuple[int, float]] = field(default_factory=list)  # (step, painted at)
    latencies: list[float] = field(default_factory=list)  # seconds
    shown: int = 0  # steps seen themselves, not merged into a later update

    def painted(self, index: int, at: float) -> None:
        self.pending.append((index, at))

    def check(self, fb: np.ndarray, now: float, changed: Sequence[Rect]) -> None:
        """After an update that changed ``changed``: which painted steps show now?

        Only steps the update touched can have come to show; the newest one
        that shows delivers itself and every older one still waiting.
        """
        if not self.pending or not changed:
            return
        box = _bounds(changed)
        for position in range(len(self.pending) - 1, -1, -1):
            step = self.steps[self.pending[position][0]]
            if _touches(step, box) and shows(step, fb):
                self.latencies.extend(now - at for _, at in self.pending[: position + 1])
                self.shown += 1
                del self.pending[: position + 1]
                return

    @property
    def missed(self) -> int:
        return len(self.pending)


def _bounds(rects: Sequence[Rect]) -> tuple[int, int, int, int]:
    return (
        min(r.x for r in rects),
        min(r.y for r in rects),
        max(r.x + r.w for r in rects),
        max(r.y + r.h for r in rects),
    )


def _touches(step: Step, box: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = box
    return any(
        p.rect.x < x1 and x0 < p.rect.x + p.rect.w and p.rect.y < y1 and y0 < p.rect.y + p.rect.h
        for p in step.probes
    )


class MeasuringTerminal(rfbclient.RFBClientProtocol):
    def __init__(self, profile: Profile, options: rfbclient.ClientOptions | None = None) -> None:
        super().__init__(options or PLAIN, self._event)
        self.profile = profile
        self.desktop_name = ""
        self.tracker: Tracker | None = None
        self.on_update: Callable[[float], None] | None = None  # called with the time
        self.bytes = 0
        self.updates = 0
        self.init_at: float | None = None  # perf_counter at ServerInit
        self.first_update_at: float | None = None  # perf_counter at the first update decoded
        self.ready: defer.Deferred[MeasuringTerminal] = defer.Deferred()
        self.closed.addBoth(self._gone)

    def dataReceived(self, data: bytes) -> None:
        self.bytes += len(data)
        super().dataReceived(data)

    def _event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        if isinstance(event, ServerInitReceived):
            self.init_at = time.perf_counter()
            self.desktop_name = event.name
            self.conn.set_encodings(self.profile.encodings)
            self.conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            now = time.perf_counter()
            if self.first_update_at is None:
                self.first_update_at = now
            self.updates += 1
            self.conn.request_update(incremental=True)
            self.flush()
            if self.tracker is not None:
                self.tracker.check(self.conn.framebuffer, now, event.rects)
            if self.on_update is not None:
                self.on_update(now)
            if not self.ready.called:
                self.ready.callback(self)

    def _gone(self, reason: Failure | None) -> None:
        if not self.ready.called:
            why = self.error or (reason.getErrorMessage() if reason else "closed")
            self.ready.errback(ConnectionError(f"terminal connection ended: {why}"))

    def reset_counters(self) -> None:
        self.bytes = 0
        self.updates = 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


async def connect(
    port: int,
    profile: Profile,
    source: str = "127.0.0.1",
    options: rfbclient.ClientOptions | None = None,
) -> MeasuringTerminal:
    """A terminal on loopback ``port`` from address ``source``, past its first update.

    thinserve tells plain viewers apart by address, so terminals of one
    thinserve each connect from their own 127.0.0.x.  ``options``: the
    security to use (default: None).
    """
    endpoint = f"{rfbclient.tcp('127.0.0.1', port)}:bindAddress={source}"
    factory = protocol.Factory.forProtocol(lambda: MeasuringTerminal(profile, options))
    proto: MeasuringTerminal = await endpoints.clientFromString(reactor, endpoint).connect(factory)
    proto.ready.addTimeout(30, reactor)
    return await proto.ready
