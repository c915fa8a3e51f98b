"""How fast a terminal's link is, and the JPEG quality level it can carry.

A terminal behind a slow link answers late; so does one whose CPU is busy
decoding.  Only the first should get a lower JPEG quality: the second
would get worse pictures and no more frames.  So the link is judged from
what the kernel saw of the connection (``tcpinfo``, Linux), not from how
long the terminal takes to answer.

**Readings.**  The session reads the socket's TCP_INFO at each update and
request; a reading compares the newest with the one ``WINDOW`` seconds
older (or the oldest, on a younger connection).  Between the two: the bytes
the terminal acknowledged, and the time the connection was busy (had data
to deliver), split into time held back by the receiver's window (a
terminal that does not read fast enough), by the sender's own buffer, and
the rest: time the data waited in the network (the congestion window).
The link *delivers* the acknowledged bytes over the busy time (from
``MIN_ACKED`` bytes on; the kernel counts time in clock ticks, so the busy
time counts as at least ``BUSY_FLOOR``).  The link is *the limit* when the
network held the data back at least ``NETWORK_SHARE`` of the window and
longer than the receiver and the sender did together.  A terminal that
reads slowly is window-limited; one that decodes slowly after reading, or
an idle one, leaves the connection idle: neither makes the link the limit.

**Levels.**  ``LEVEL_KBPS`` gives each JPEG quality level the rate it
needs; a link carries the highest level whose need its rate meets.  Down:
only when the link is the limit and delivers under ``KEEP_MARGIN`` of the
current level's need, to the level its rate carries; a hiccup (the network
holding data back for less than ``NETWORK_SHARE`` of the window) is not a
slow link.  Up: when the link delivers ``RAISE_MARGIN`` times the next
level's need, ``RAISE_HOLD`` seconds after the last change, to the level
its rate carries.  The terminal's own request is the ceiling, and a
terminal that asked for no JPEG quality level gets no JPEG.

**Fallback: timing answers.**  Where there is no TCP_INFO (not Linux, a
Unix socket, a kernel before 4.10) the meter times what the session already
does.  A classic viewer asks for its next update right after it has taken
in the previous one, so the time from sending an update to the next
FramebufferUpdateRequest is the time the update took to cross the link
(and be decoded) plus one round trip; a terminal on continuous updates
answers a fence put behind the updates (``FenceBatch``).  Tiny updates
time the round trip; updates of at least ``MIN_SAMPLE_BYTES`` are samples,
bytes over (time - minimum round trip), averaged with more weight for the
longer ones.  Down needs the average under ``KEEP_MARGIN`` of the level's
need *and* slow samples for ``SLOW_EVIDENCE`` seconds in a row; up as
above.  This cannot tell a slow terminal from a slow link.

Pure logic: the caller passes the times and the TCP_INFO answers in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .tcpinfo import TcpInfo, info_of

MAX_LEVEL = 9
# The least rate (kbit/s) each JPEG quality level 0..9 needs: about what a
# full 1280x1024 screen of photo-like content at that level takes to go out
# in half a second; level 9 (JPEG quality 100) only on LAN-class links.
LEVEL_KBPS = (0, 1_000, 1_200, 1_500, 1_800, 2_500, 3_000, 4_000, 6_000, 30_000)
# A link shown to be the limit below this rate (kbit/s) carries bytes dearer
# than the CPU time it takes to save them.  Whole screens of text and
# windows at zlib level 1 take 2.1-3.4 ms less and 29-56 KB more than at
# levels 2 and 3 here; those bytes take as long to send as the time saved
# only at about 110-130 Mbit/s, so this threshold errs towards bytes.
FAST_KBPS = 150_000
KEEP_MARGIN = 0.75  # a level stays while the rate is above this share of its need
RAISE_MARGIN = 1.25  # a higher level needs this much more than its need ...
RAISE_HOLD = 2.0  # ... and this many seconds since the last change

# Readings of TCP_INFO.
WINDOW = 2.0  # seconds a reading covers
NETWORK_SHARE = 0.4  # the link is the limit when the network held data back this share of it
MIN_ACKED = 64 * 1024  # bytes acknowledged in a window before its rate means anything
BUSY_FLOOR = 0.01  # seconds: the kernel counts busy time in clock ticks (1-10 ms)
SNAPSHOT_SPACING = 0.05  # seconds between the TCP_INFO answers kept
# Seconds between two reads of TCP_INFO: the session asks at every update and
# request, and with many terminals at many updates a second the reads would
# be a good part of its work; a drop still needs NETWORK_SHARE of WINDOW.
READ_SPACING = 0.2
# ... and a read waits for this many bytes written since the last one, or for
# WINDOW to pass: a reading tells a rate only from MIN_ACKED bytes, and fifty
# terminals watching a typed character and a clock were read five times a
# second each for nothing (a tenth of the server's time).
READ_BYTES = 16 * 1024
MAX_SNAPSHOTS = 64  # at most this many kept (WINDOW / SNAPSHOT_SPACING fit)

# The fallback: timing the terminal's answers.
SLOW_EVIDENCE = 0.25  # slower samples must take this many seconds in a row
MIN_SAMPLE_BYTES = 8 * 1024  # smaller updates are timed by latency, not bandwidth
PROBE_MAX_BYTES = 1024  # updates this small time a round trip
SMOOTHING = 0.3  # least weight of the newest sample in the moving average
SMOOTHING_TIME = 0.5  # seconds: longer samples weigh more
MIN_TRANSFER = 0.001  # seconds: a floor for the transfer time of one sample


def level_for(kbps: float) -> int:
    """The highest JPEG quality level a link of ``kbps`` kbit/s carries."""
    return max(level for level, need in enumerate(LEVEL_KBPS) if kbps >= need)


def effective_quality(requested: int | None, link_level: int) -> int | None:
    """The quality level to encode with: never above the terminal's, None stays None."""
    return None if requested is None else min(requested, link_level)


@dataclass(frozen=True)
class Verdict:
    """What moved the link's level: the rate, and how it was measured."""

    level: int
    kbps: float
    at: float  # when
    network_share: float | None = None  # of the window; None: timed by the terminal's answers
    window: float = WINDOW  # seconds the reading covered

    def describe(self, now: float) -> str:
        """The figures for a log line, at ``now``."""
        if self.network_share is None:
            text = f"link timed by the terminal's answers at {self.kbps:.0f} kbit/s"
        else:
            text = (
                f"link delivers {self.kbps:.0f} kbit/s, network-limited "
                f"{self.network_share:.0%} of the last {self.window:.1f} s"
            )
        age = now - self.at
        return text if age < 1 else f"{text} (measured {age:.0f} s ago)"


@dataclass
class Levels:
    """The link's JPEG quality level, moved with hysteresis; each move a verdict."""

    level: int = MAX_LEVEL  # until measured, the link is taken to carry everything
    changed_at: float = -math.inf
    verdict: Verdict | None = None

    def lower(self, kbps: float, now: float, reading: Reading | None = None) -> bool:
        """A link shown to be the limit delivers ``kbps``: drop if clearly too slow."""
        if kbps >= LEVEL_KBPS[self.level] * KEEP_MARGIN:
            return False
        self._move(level_for(kbps), kbps, now, reading)
        return True

    def raise_(self, kbps: float, now: float, reading: Reading | None = None) -> bool:
        """The link delivers ``kbps``: go up if clearly fast enough, and not too soon."""
        if self.level == MAX_LEVEL or now - self.changed_at < RAISE_HOLD:
            return False
        if kbps < LEVEL_KBPS[self.level + 1] * RAISE_MARGIN:
            return False
        self._move(level_for(kbps), kbps, now, reading)
        return True

    def _move(self, level: int, kbps: float, now: float, reading: Reading | None) -> None:
        self.level = level
        self.changed_at = now
        if reading is None:
            self.verdict = Verdict(level, kbps, now)
        else:
            share, window = reading.network_share, max(reading.seconds, WINDOW)
            self.verdict = Verdict(level, kbps, now, share, window)


# -- readings of TCP_INFO ------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """The counters of one TCP_INFO answer, at ``at`` (seconds)."""

    at: float
    acked: int  # cumulatively: only grows
    delivered: int  # acknowledged, also selectively
    busy: float
    receiver: float  # rwnd-limited
    sender: float  # sndbuf-limited

    @classmethod
    def of(cls, info: TcpInfo, now: float) -> Snapshot | None:
        """None when the kernel does not say what held the sending back."""
        acked, delivered = info.bytes_acked, info.delivered
        if (
            acked is None
            or delivered is None
            or info.busy is None
            or info.rwnd_limited is None
            or info.sndbuf_limited is None
        ):
            return None
        return cls(now, acked, delivered, info.busy, info.rwnd_limited, info.sndbuf_limited)


@dataclass(frozen=True)
class Reading:
    """What the counters say about the link between two snapshots."""

    seconds: float
    delivered: int  # bytes the terminal acknowledged
    busy: float  # seconds the connection had data to deliver, of which ...
    receiver: float  # ... the receiver's window held it back
    sender: float  # ... the sender's buffer did

    @classmethod
    def between(cls, old: Snapshot, new: Snapshot) -> Reading:
        return cls(
            new.at - old.at,
            max(0, new.delivered - old.delivered),
            new.busy - old.busy,
            new.receiver - old.receiver,
            new.sender - old.sender,
        )

    @property
    def network(self) -> float:
        """Seconds the data waited in the network: busy, and not held back by either end."""
        return max(0.0, self.busy - self.receiver - self.sender)

    @property
    def network_share(self) -> float:
        """The network's share of the window (of the span, if longer)."""
        return self.network / max(self.seconds, WINDOW)

    @property
    def link_limited(self) -> bool:
        """The network, not the terminal nor the server, held the data back."""
        return self.network_share >= NETWORK_SHARE and self.network > self.receiver + self.sender

    @property
    def kbps(self) -> float | None:
        """What the link delivered while busy; None for too few bytes to tell."""
        if self.delivered < MIN_ACKED:
            return None
        return self.delivered * 8 / 1000 / max(self.busy, BUSY_FLOOR)


class TcpWindow:
    """The TCP_INFO snapshots of the last ``WINDOW`` seconds (and one before)."""

    def __init__(self) -> None:
        self.snapshots: deque[Snapshot] = deque(maxlen=MAX_SNAPSHOTS)

    def add(self, snapshot: Snapshot) -> None:
        snapshots = self.snapshots
        if snapshots and snapshot.acked < snapshots[-1].acked:
            snapshots.clear()  # counters went back: another connection
        if len(snapshots) >= 2 and snapshot.at - snapshots[-2].at < SNAPSHOT_SPACING:
            snapshots.pop()  # keep them spaced: the newest replaces one too close
        snapshots.append(snapshot)
        while len(snapshots) > 2 and snapshots[1].at <= snapshot.at - WINDOW:
            snapshots.popleft()  # the next one is old enough to start the window

    def reading(self) -> Reading | None:
        """From the newest snapshot at least WINDOW old (else the oldest) to the newest."""
        if len(self.snapshots) < 2:
            return None
        return Reading.between(self.snapshots[0], self.snapshots[-1])


class TcpPolicy:
    """The link's level from TCP_INFO readings."""

    def __init__(self) -> None:
        self.window = TcpWindow()
        self.levels = Levels()
        self.last: Reading | None = None

    def observe(self, info: TcpInfo, now: float) -> bool:
        """Take in TCP_INFO read at ``now``; True if the link's level changed."""
        snapshot = Snapshot.of(info, now)
        if snapshot is None:
            return False
        self.window.add(snapshot)
        reading = self.last = self.window.reading()
        if reading is None or (kbps := reading.kbps) is None:
            return False
        if reading.link_limited and self.levels.lower(kbps, now, reading):
            return True
        return self.levels.raise_(kbps, now, reading)


# -- the fallback: timing the terminal's answers ------------------------------------------------
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


class QualityPolicy:
    """The link's level from timed answers: down only after slow evidence in a row."""

    def __init__(self) -> None:
        self.levels = Levels()
        self.slow_seconds = 0.0  # samples below the level's keep rate, in a row

    @property
    def level(self) -> int:
        return self.levels.level

    def decide(self, sample: Sample, kbps: float, now: float) -> int:
        """The link's level after ``sample``, with ``kbps`` the smoothed rate, at ``now``."""
        keep = LEVEL_KBPS[self.levels.level] * KEEP_MARGIN
        self.slow_seconds = self.slow_seconds + sample.seconds if sample.kbps < keep else 0.0
        if kbps < keep:
            if self.slow_seconds >= SLOW_EVIDENCE and self.levels.lower(kbps, now):
                self.slow_seconds = 0.0
        else:
            self.levels.raise_(kbps, now)
        return self.levels.level


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


# -- one terminal's link, as a session uses it ---------------------------------------------
TcpInfoSource = Callable[[object], TcpInfo | None]


class LinkQuality:
    """One terminal's link: TCP_INFO readings where there are, timed answers elsewhere.

    ``transport`` gives the connection's transport (None while there is
    none; no ``transport`` at all: always timed answers); ``tcp_info`` reads
    a transport's TCP_INFO.  The first look at a transport decides, for the
    connection's life, which of the two measures.
    """

    def __init__(
        self,
        transport: Callable[[], object] | None = None,
        tcp_info: TcpInfoSource = info_of,
        read_spacing: float = READ_SPACING,
    ) -> None:
        self._transport = transport or (lambda: None)
        self._read_spacing = read_spacing
        self._tcp_info = tcp_info
        self.tcp: TcpPolicy | None = None  # set when TCP_INFO says what held sending back
        self.timed = transport is None  # no TCP_INFO: the terminal's answers are timed
        self.meter = LinkMeter()
        self.policy = QualityPolicy()
        self.fences = FenceBatch()
        self._read_at = -math.inf
        self._read_written = 0  # the bytes written when it was read

    def observe(self, now: float, written: int | None = None) -> bool:
        """Read the link at ``now``, unless it was read less than the read
        spacing ago, or less than WINDOW ago with fewer than READ_BYTES
        ``written`` since (the connection's total; None: not counted); True
        if its level changed."""
        if now - self._read_at < self._read_spacing or self._little_written(now, written):
            return False
        info = self._read()
        if info is None:
            return False
        self._read_at = now
        self._read_written = written or 0
        return self.tcp is not None and self.tcp.observe(info, now)

    def _little_written(self, now: float, written: int | None) -> bool:
        return (
            written is not None
            and written - self._read_written < READ_BYTES
            and now - self._read_at < WINDOW
        )

    def _read(self) -> TcpInfo | None:
        if self.timed:
            return None
        transport = self._transport()
        if transport is None:
            return None
        info = self._tcp_info(transport)
        if self.tcp is None:
            if info is not None and info.times_limits:
                self.tcp = TcpPolicy()
            else:
                self.timed = True
                return None
        return info

    def pushed(self, size: int, started: float) -> bool:
        """An update went out on continuous updates; True: send a timing fence now."""
        if not self._timing_answers():
            return False
        batch = self.fences.pushed(size, started)
        if batch is not None:
            self.meter.update_sent(*batch)
        return batch is not None

    def fence_answered(self, now: float) -> bool:
        """The timing fence was answered at ``now``; True if the link's level changed."""
        return self.fences.answered(now) and self.request_arrived(now)

    def update_sent(self, size: int, now: float) -> None:
        if self._timing_answers():
            self.meter.update_sent(size, now)

    def request_arrived(self, now: float, written: int | None = None) -> bool:
        """The terminal asked for more at ``now`` (``written`` as for
        :meth:`observe`); True if the link's level changed."""
        if not self._timing_answers():
            return self.observe(now, written)
        sample = self.meter.request_arrived(now)
        if sample is None or self.meter.kbps is None:
            return False
        before = self.policy.level
        return self.policy.decide(sample, self.meter.kbps, now) != before

    def _timing_answers(self) -> bool:
        if self.tcp is None and not self.timed:
            self._read()  # decide which measures
        return self.timed

    def quality(self, requested: int | None) -> int | None:
        """The quality level for a terminal that asked for ``requested``."""
        return effective_quality(requested, self.level)

    def fast(self) -> bool:
        """Whether the link is fast enough that time matters more than bytes:
        at the highest level, and not shown to be the limit below FAST_KBPS."""
        if self.level < MAX_LEVEL:
            return False
        last = None if self.tcp is None else self.tcp.last
        if last is None or not last.link_limited:
            return True
        kbps = last.kbps
        return kbps is None or kbps >= FAST_KBPS

    def _levels(self) -> Levels:
        return self.tcp.levels if self.tcp is not None else self.policy.levels

    @property
    def level(self) -> int:
        return self._levels().level

    @property
    def kbps(self) -> float | None:
        """The link's latest rate: the newest reading's, or the timed average."""
        if self.tcp is not None:
            return None if self.tcp.last is None else self.tcp.last.kbps
        return self.meter.kbps

    @property
    def verdict(self) -> Verdict | None:
        """What set the link's level; None while nothing did."""
        return self._levels().verdict

    def describe(self, now: float) -> str:
        """What the link's level rests on, for a log line."""
        verdict = self.verdict
        if verdict is None:
            return "link not measured yet"
        return verdict.describe(now)
