"""How fast a terminal's link is, and the JPEG quality level it can carry.

The meter times what the session already does.  A classic viewer asks for
its next update right after it has taken in the previous one, so the time
from sending an update to the next FramebufferUpdateRequest is the time the
update took to cross the link (and be decoded) plus one round trip.  Tiny
updates (a cursor move, a typed letter) take about one round trip: their
times give the minimum round-trip time.  Updates of at least
``MIN_SAMPLE_BYTES`` are samples: bytes over (time - minimum round trip).
The smoothed rate is a moving average of the samples in which the newest
weighs at least ``SMOOTHING``, and more the longer it took (a sample of
``t`` seconds weighs ``1 - exp(-t / SMOOTHING_TIME)``): a two-second update
over a slow link outweighs any number of quick ones before it.

The policy maps the smoothed rate to a JPEG quality level with the
thresholds of ``LEVEL_KBPS``, with hysteresis both ways.  Down: a level is
kept until the smoothed rate falls under ``KEEP_MARGIN`` of its threshold
*and* the samples below that took ``SLOW_EVIDENCE`` seconds in a row, so a
hiccup (a busy moment of the server or of the terminal) is not taken for a
slow link, while one slow full-screen update is enough.  Up: a higher level
needs the smoothed rate above ``RAISE_MARGIN`` times its threshold and
``RAISE_HOLD`` seconds since the last change.  The terminal's own request is
the ceiling, and a terminal that asked for no JPEG quality level gets no
JPEG.

Pure logic: the caller passes the times in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_LEVEL = 9
# The least rate (kbit/s) each JPEG quality level 0..9 needs: about what a
# full 1280x1024 screen of photo-like content at that level takes to go out
# in half a second; level 9 (JPEG quality 100) only on LAN-class links.
LEVEL_KBPS = (0, 1_000, 1_200, 1_500, 1_800, 2_500, 3_000, 4_000, 6_000, 30_000)
KEEP_MARGIN = 0.75  # a level stays while the rate is above this share of its need ...
SLOW_EVIDENCE = 0.25  # ... or slower samples took less than this many seconds in a row
RAISE_MARGIN = 1.25  # a higher level needs this much more than its need ...
RAISE_HOLD = 2.0  # ... and this many seconds since the last change
MIN_SAMPLE_BYTES = 8 * 1024  # smaller updates are timed by latency, not bandwidth
PROBE_MAX_BYTES = 1024  # updates this small time a round trip
SMOOTHING = 0.3  # least weight of the newest sample in the moving average
SMOOTHING_TIME = 0.5  # seconds: longer samples weigh more
MIN_TRANSFER = 0.001  # seconds: a floor for the transfer time of one sample


@dataclass(frozen=True)
class Sample:
    """One update big enough to time the link: its bytes and transfer seconds."""

    size: int
    seconds: float

    @property
    def kbps(self) -> float:
        return self.size * 8 / 1000 / self.seconds


@dataclass
class LinkMeter:
    """Throughput of one terminal's link, from updates and the requests that follow."""

    rate: float | None = None  # smoothed bytes per second; None until measured
    min_rtt: float | None = None  # seconds, from the smallest updates
    samples: int = 0
    _pending: tuple[int, float] | None = None  # (bytes, sent at) awaiting a request

    def update_sent(self, size: int, now: float) -> None:
        """An update of ``size`` bytes went out at ``now``, answering a request."""
        self._pending = (size, now)

    def request_arrived(self, now: float) -> Sample | None:
        """The terminal asked for more at ``now``: the sample this makes, if any."""
        if self._pending is None:
            return None
        size, sent = self._pending
        self._pending = None
        elapsed = now - sent
        if elapsed < 0:
            return None
        if size <= PROBE_MAX_BYTES:
            self.min_rtt = elapsed if self.min_rtt is None else min(self.min_rtt, elapsed)
        if size < MIN_SAMPLE_BYTES:
            return None
        sample = Sample(size, max(elapsed - (self.min_rtt or 0.0), MIN_TRANSFER))
        self._add(sample)
        return sample

    def _add(self, sample: Sample) -> None:
        rate = sample.size / sample.seconds
        weight = max(SMOOTHING, 1 - math.exp(-sample.seconds / SMOOTHING_TIME))
        self.rate = rate if self.rate is None else self.rate + weight * (rate - self.rate)
        self.samples += 1

    @property
    def kbps(self) -> float | None:
        """The smoothed rate in kbit/s."""
        return None if self.rate is None else self.rate * 8 / 1000


def level_for(kbps: float) -> int:
    """The highest JPEG quality level a link of ``kbps`` kbit/s carries."""
    return max(level for level, need in enumerate(LEVEL_KBPS) if kbps >= need)


@dataclass
class QualityPolicy:
    """The link's JPEG quality level, moved by the measured rate with hysteresis."""

    level: int = MAX_LEVEL  # until measured, the link is taken to carry everything
    changed_at: float = -math.inf
    slow_seconds: float = 0.0  # samples below the level's keep rate, in a row

    def decide(self, sample: Sample, kbps: float, now: float) -> int:
        """The link's level after ``sample``, with ``kbps`` the smoothed rate, at ``now``."""
        keep = LEVEL_KBPS[self.level] * KEEP_MARGIN
        self.slow_seconds = self.slow_seconds + sample.seconds if sample.kbps < keep else 0.0
        if kbps < keep:
            if self.slow_seconds >= SLOW_EVIDENCE:
                self._move(level_for(kbps), now)
        elif now - self.changed_at >= RAISE_HOLD:
            higher = level_for(kbps / RAISE_MARGIN)
            if higher > self.level:
                self._move(higher, now)
        return self.level

    def _move(self, level: int, now: float) -> None:
        self.level = level
        self.changed_at = now
        self.slow_seconds = 0.0


def effective_quality(requested: int | None, link_level: int) -> int | None:
    """The quality level to encode with: never above the terminal's, None stays None."""
    return None if requested is None else min(requested, link_level)


class FenceBatch:
    """Updates pushed to a terminal on continuous updates, timed by fences.

    A fence answered once everything before it took effect times every
    update sent since the previous fence, from when the first of them could
    start to cross the link: once it was sent and the link was done with
    what came before (the previous fence's answer).  One fence at a time.
    """

    def __init__(self) -> None:
        self.out = False  # a fence is on its way
        self.answered_at = 0.0
        self.size = 0  # bytes pushed since the last fence went
        self.first: float | None = None  # when the first of them began

    def pushed(self, size: int, started: float) -> tuple[int, float] | None:
        """An update of ``size`` bytes begun at ``started`` went out.

        Returns (bytes, since when) to time with a fence sent now, or None
        while the previous fence is still out.
        """
        self.size += size
        if self.first is None:
            self.first = started
        if self.out:
            return None
        batch = (self.size, max(self.first, self.answered_at))
        self.size, self.first, self.out = 0, None, True
        return batch

    def answered(self, now: float) -> bool:
        """The fence's answer came at ``now``; False if none was out."""
        if not self.out:
            return False
        self.out, self.answered_at = False, now
        return True


class LinkQuality:
    """One terminal's meter and policy together, as a session uses them."""

    def __init__(self) -> None:
        self.meter = LinkMeter()
        self.policy = QualityPolicy()
        self.fences = FenceBatch()

    def pushed(self, size: int, started: float) -> bool:
        """An update went out on continuous updates; True: send a timing fence now."""
        batch = self.fences.pushed(size, started)
        if batch is not None:
            self.meter.update_sent(*batch)
        return batch is not None

    def fence_answered(self, now: float) -> bool:
        """The timing fence was answered at ``now``; True if the link's level changed."""
        return self.fences.answered(now) and self.request_arrived(now)

    def update_sent(self, size: int, now: float) -> None:
        self.meter.update_sent(size, now)

    def request_arrived(self, now: float) -> bool:
        """Note a request at ``now``; True if the link's level changed."""
        sample = self.meter.request_arrived(now)
        if sample is None or self.meter.kbps is None:
            return False
        before = self.policy.level
        return self.policy.decide(sample, self.meter.kbps, now) != before

    def quality(self, requested: int | None) -> int | None:
        """The quality level for a terminal that asked for ``requested``."""
        return effective_quality(requested, self.policy.level)

    @property
    def level(self) -> int:
        return self.policy.level

    @property
    def kbps(self) -> float | None:
        return self.meter.kbps
