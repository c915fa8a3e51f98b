"""The link's JPEG quality level from TCP_INFO readings: synthetic kernel counters, times passed in.

A simulated connection moves the counters the kernel keeps (bytes
acknowledged, busy time and what limited it) as a slow link, a slow
terminal or an idle one would; the session's reads of TCP_INFO are
``observe`` calls at the simulated times.
"""

from __future__ import annotations

import itertools
import re

import pytest

from thinserve.relay.bandwidth import (
    BUSY_FLOOR,
    FAST_KBPS,
    KEEP_MARGIN,
    LEVEL_KBPS,
    MAX_LEVEL,
    MAX_SNAPSHOTS,
    MIN_ACKED,
    NETWORK_SHARE,
    RAISE_HOLD,
    RAISE_MARGIN,
    READ_BYTES,
    READ_SPACING,
    WINDOW,
    LinkQuality,
    Reading,
    level_for,
)
from thinserve.relay.tcpinfo import TcpInfo

MSS = 1448
TICK = 0.1  # seconds between the session's reads while a stream goes on


class Connection:
    """The counters of one simulated TCP connection, and the session's reads of them."""

    def __init__(self) -> None:
        self.now = 100.0
        self.acked = 0  # bytes, cumulatively acknowledged
        self.sacked = 0  # segments selectively acknowledged beyond them
        self.busy = 0.0
        self.rwnd = 0.0
        self.sndbuf = 0.0
        self.times_limits = True  # False: a kernel before 4.10
        # Read at every tick: the policy's timing, not the session's spacing.
        self.link = LinkQuality(lambda: self, lambda transport: self.info(), read_spacing=0.0)
        self.changes: list[tuple[float, int, str]] = []  # (time, new level, logged figures)
        self.link.observe(self.now)

    def info(self) -> TcpInfo:
        limits = self.times_limits
        return TcpInfo(
            snd_mss=MSS,
            sacked=self.sacked,
            bytes_acked=self.acked,
            busy=self.busy if limits else None,
            rwnd_limited=self.rwnd if limits else None,
            sndbuf_limited=self.sndbuf if limits else None,
        )

    def run(
        self, seconds: float, kbit: float, limit: str = "network", busy_share: float = 1.0
    ) -> None:
        """``seconds`` of sending that delivers ``kbit`` kbit/s on average, busy
        ``busy_share`` of the time and held back by ``limit`` (network,
        receiver, sender) while busy, the session reading TCP_INFO every TICK."""
        steps = round(seconds / TICK)
        for _ in range(steps):
            self.now += TICK
            self.acked += round(kbit * 1000 / 8 * TICK)
            busy = TICK * busy_share
            self.busy += busy
            if limit == "receiver":
                self.rwnd += busy
            elif limit == "sender":
                self.sndbuf += busy
            self.observe()

    def mixed(self, seconds: float, kbit: float, receiver_share: float) -> None:
        """Busy all the time, the receiver's window the limit ``receiver_share`` of it."""
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            self.acked += round(kbit * 1000 / 8 * TICK)
            self.busy += TICK
            self.rwnd += TICK * receiver_share
            self.observe()

    def idle(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            self.observe()

    def observe(self) -> None:
        if self.link.observe(self.now):
            self.changes.append((self.now, self.link.level, self.link.describe(self.now)))

    @property
    def level(self) -> int:
        return self.link.level


# -- slow links drop the level -------------------------------------------------------------------
@pytest.mark.parametrize("kbit", [500, 1_100, 2_000, 2_800, 5_000, 20_000])
def test_a_slow_link_drops_to_the_level_its_rate_carries(kbit: float) -> None:
    conn = Connection()
    start = conn.now
    conn.run(4.0, kbit)
    assert len(conn.changes) == 1  # once, then steady
    when, level, _ = conn.changes[0]
    assert level == level_for(kbit) < MAX_LEVEL
    # As soon as the network held data back NETWORK_SHARE of the window, and
    # enough bytes came through to measure.
    expected = max(NETWORK_SHARE * WINDOW, MIN_ACKED * 8 / 1000 / kbit)
    assert when - start == pytest.approx(expected, abs=TICK * 1.01)
    assert conn.link.quality(9) == level
    assert conn.link.quality(level - 1 if level else 0) == max(level - 1, 0)
    assert conn.link.quality(None) is None


def test_the_log_names_the_figures_that_set_the_level() -> None:
    conn = Connection()
    assert conn.link.describe(conn.now) == "link not measured yet"
    conn.run(1.0, 1_850)
    assert conn.level == level_for(1_850) == 4
    verdict = conn.link.verdict
    assert verdict is not None and verdict.level == 4 and round(verdict.kbps) == 1_850
    when, _, said = conn.changes[0]
    shown = re.fullmatch(
        r"link delivers 1850 kbit/s, network-limited (\d+)% of the last 2.0 s", said
    )
    assert shown is not None
    assert NETWORK_SHARE * 100 <= int(shown.group(1)) <= (when - 100.0) / WINDOW * 100 + 1
    conn.run(5.0, 1_850)
    later = conn.link.describe(conn.now)
    assert later.startswith("link delivers 1850 kbit/s") and "measured 5 s ago" in later


@pytest.mark.parametrize("kbit", [300, 999, 1_000, 1_499, 1_800, 2_499, 3_999, 5_999, 22_000])
def test_a_logged_level_is_always_the_one_the_table_gives_for_the_logged_rate(
    kbit: float,
) -> None:
    conn = Connection()
    conn.run(3.0, kbit)
    conn.run(3.0, kbit * 8)  # faster: back up
    conn.run(3.0, kbit)  # and down again
    assert len(conn.changes) >= 2
    for _, level, said in conn.changes:
        shown = re.fullmatch(r"link delivers (\d+) kbit/s, network-limited \d+% of .*", said)
        assert shown is not None and level_for(float(shown.group(1))) == level


def test_selective_acknowledgements_count_as_delivered() -> None:
    """During loss recovery the cumulative ACK stalls while SACKs say data arrives."""
    conn = Connection()
    conn.run(1.0, 2_000)
    level = conn.level
    for _ in range(5):  # half a second: nothing cumulatively acknowledged
        conn.now += TICK
        conn.busy += TICK
        conn.sacked += round(2_000 * 1000 / 8 * TICK / MSS)
        conn.observe()
    reading = conn.link.tcp.last if conn.link.tcp is not None else None
    assert reading is not None and reading.kbps is not None
    assert reading.kbps == pytest.approx(2_000, rel=0.05)
    assert conn.level == level


def test_a_link_slow_while_the_terminal_also_lags_a_little_still_drops() -> None:
    """A new connection: the receiver's window grows, limiting a quarter of the time."""
    conn = Connection()
    conn.mixed(2.0, 2_000, receiver_share=0.25)
    assert conn.level == level_for(2_000)


# -- slow terminals, idle terminals, hiccups: no drop ------------------------------------------
@pytest.mark.parametrize("kbit", [100, 500, 2_000, 8_000])
def test_a_terminal_that_reads_slowly_keeps_its_level(kbit: float) -> None:
    """Its window closes: the kernel says the receiver, not the network, held data back."""
    conn = Connection()
    conn.mixed(30.0, kbit, receiver_share=0.9)
    assert conn.changes == [] and conn.level == MAX_LEVEL


def test_a_terminal_that_decodes_slowly_keeps_its_level() -> None:
    """It reads at once and asks late: the connection idles between quick updates."""
    conn = Connection()
    for _ in range(60):
        conn.run(TICK, 100_000, busy_share=0.05)  # 250 kB took 5 ms
        conn.idle(0.4)  # decoding
    assert conn.changes == [] and conn.level == MAX_LEVEL


def test_a_terminal_on_a_lan_sending_small_updates_keeps_its_level() -> None:
    """Busy only for a round trip at a time: bytes per busy second are low, but the
    network never held data back for long."""
    conn = Connection()
    for _ in range(100):
        conn.run(TICK, 3_000, busy_share=0.2)  # 37 kB a tenth of a second, 20 ms busy
    assert conn.changes == [] and conn.level == MAX_LEVEL


def test_a_hiccup_is_not_a_slow_link() -> None:
    conn = Connection()
    hiccup = NETWORK_SHARE * WINDOW * 0.8  # network-limited, but not for long
    conn.run(hiccup, 500)
    conn.idle(3.0)
    conn.run(hiccup, 500)
    conn.run(1.0, 100_000, busy_share=0.05)
    assert conn.changes == [] and conn.level == MAX_LEVEL


def test_time_limited_by_the_senders_buffer_is_not_the_network() -> None:
    conn = Connection()
    conn.run(10.0, 500, limit="sender")
    assert conn.changes == [] and conn.level == MAX_LEVEL


def test_too_few_bytes_say_nothing() -> None:
    """Typing over a slow link: the network is busy, but with too little to measure."""
    conn = Connection()
    kbit = MIN_ACKED * 8 / 1000 / WINDOW * 0.9  # under MIN_ACKED per window
    conn.run(10.0, kbit)
    assert conn.changes == [] and conn.level == MAX_LEVEL


# -- fast links: time matters more than bytes ---------------------------------------------------
def test_a_link_is_fast_until_shown_to_be_the_limit_below_fast_kbps() -> None:
    conn = Connection()
    assert conn.link.fast()  # not measured yet: taken to carry everything
    conn.run(4.0, FAST_KBPS * 3, busy_share=0.05)  # a LAN, nothing waits
    assert conn.link.fast() and conn.level == MAX_LEVEL
    conn.run(4.0, FAST_KBPS * 2)  # the network is the limit, but a fast one
    assert conn.link.fast() and conn.level == MAX_LEVEL
    conn.run(4.0, FAST_KBPS / 3)  # a 50 Mbit/s link, full: bytes cost time
    assert not conn.link.fast() and conn.level == MAX_LEVEL
    conn.run(4.0, FAST_KBPS / 3, limit="receiver")  # a slow terminal is not a slow link
    assert conn.link.fast()


def test_a_link_that_lowered_the_quality_is_not_fast() -> None:
    conn = Connection()
    conn.run(4.0, 2_000)
    assert conn.level < MAX_LEVEL and not conn.link.fast()
    conn.idle(10.0)  # nothing new is measured: the level, and the verdict, stay
    assert not conn.link.fast()


def test_a_link_timed_by_the_terminals_answers_is_fast_at_the_highest_level() -> None:
    link = LinkQuality(lambda: None)
    link.timed = True
    assert link.fast()
    link.policy.levels.level = MAX_LEVEL - 1
    assert not link.fast()


# -- back up -------------------------------------------------------------------------------------
def test_the_level_comes_back_when_the_link_recovers() -> None:
    conn = Connection()
    conn.run(2.0, 1_500)
    dropped_at, low, _ = conn.changes[-1]
    assert low == level_for(1_500)
    recovered = conn.now
    for _ in range(20):
        conn.run(TICK, 20_000, busy_share=0.01)  # quick updates, nothing waits
        conn.idle(0.2)
    raised_at, level, _ = conn.changes[-1]
    assert level == MAX_LEVEL
    assert raised_at - dropped_at >= RAISE_HOLD
    # Not before the slow time left the window.
    assert raised_at - recovered >= WINDOW * (1 - NETWORK_SHARE)


def test_raising_needs_a_margin_and_a_quiet_spell() -> None:
    conn = Connection()
    conn.run(3.0, LEVEL_KBPS[4])
    assert conn.level == 4
    conn.run(5.0, LEVEL_KBPS[5] * RAISE_MARGIN * 0.97)
    assert conn.level == 4  # not enough margin
    conn.run(5.0, LEVEL_KBPS[5] * RAISE_MARGIN * 1.05)
    assert conn.level == level_for(LEVEL_KBPS[5] * RAISE_MARGIN * 1.05) > 4
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(conn.changes)]
    assert all(gap >= RAISE_HOLD for gap in gaps)


def test_a_rate_wobbling_around_a_need_does_not_flap() -> None:
    conn = Connection()
    conn.run(3.0, LEVEL_KBPS[6])
    assert conn.level == 6
    for step in range(100):
        conn.run(0.5, LEVEL_KBPS[6] * (1.15 if step % 2 else 0.85))
    assert len(conn.changes) == 1 and conn.level == 6


def test_a_level_is_kept_until_the_rate_falls_clearly_below_its_need() -> None:
    conn = Connection()
    conn.run(3.0, LEVEL_KBPS[6])
    conn.run(5.0, LEVEL_KBPS[6] * KEEP_MARGIN * 1.03)
    assert conn.level == 6
    conn.run(5.0, LEVEL_KBPS[6] * KEEP_MARGIN * 0.97)
    assert conn.level == level_for(LEVEL_KBPS[6] * KEEP_MARGIN * 0.97) < 6


# -- readings and what measures the link ---------------------------------------------------------
def test_a_reading_splits_busy_time_by_what_held_the_data_back() -> None:
    reading = Reading(seconds=2.0, delivered=500_000, busy=1.5, receiver=0.3, sender=0.2)
    assert reading.network == pytest.approx(1.0)
    assert reading.network_share == pytest.approx(0.5)
    assert reading.link_limited
    assert reading.kbps == pytest.approx(500_000 * 8 / 1000 / 1.5)
    window_limited = Reading(seconds=2.0, delivered=500_000, busy=1.8, receiver=0.9, sender=0.0)
    assert not window_limited.link_limited  # the network held it back no longer than the receiver
    young = Reading(seconds=0.5, delivered=500_000, busy=0.5, receiver=0.0, sender=0.0)
    assert young.network_share == pytest.approx(0.25)  # of a whole window, not of half a second
    quick = Reading(seconds=2.0, delivered=MIN_ACKED, busy=0.0, receiver=0.0, sender=0.0)
    assert quick.kbps == pytest.approx(MIN_ACKED * 8 / 1000 / BUSY_FLOOR)
    few = Reading(seconds=2.0, delivered=MIN_ACKED - 1, busy=1.0, receiver=0.0, sender=0.0)
    assert few.kbps is None


def test_snapshots_are_bounded_however_often_the_link_is_read() -> None:
    conn = Connection()
    for _ in range(5_000):
        conn.now += 0.001
        conn.acked += 100
        conn.observe()
    assert conn.link.tcp is not None
    assert len(conn.link.tcp.window.snapshots) <= MAX_SNAPSHOTS


def test_counters_going_back_start_a_new_window() -> None:
    """Another connection's counters: nothing carries over into the reading."""
    conn = Connection()
    conn.run(0.5, 1_000)
    conn.acked, conn.busy = 0, 0.0
    conn.idle(0.5)
    reading = conn.link.tcp.last if conn.link.tcp is not None else None
    assert reading is not None and reading.delivered == 0
    assert conn.level == MAX_LEVEL


def test_with_tcp_info_no_timing_fences_are_sent() -> None:
    conn = Connection()
    assert not conn.link.timed
    assert not conn.link.pushed(500_000, started=conn.now)  # no fence
    conn.link.update_sent(500_000, conn.now)
    conn.now += 10.0
    conn.link.request_arrived(conn.now)  # a late answer: not a measurement here
    assert conn.level == MAX_LEVEL and conn.link.meter.samples == 0


def test_without_tcp_info_the_terminals_answers_are_timed() -> None:
    link = LinkQuality(lambda: object(), lambda transport: None)
    link.observe(0.0)
    assert link.timed and link.tcp is None
    assert link.pushed(250_000, started=0.0)  # a timing fence goes
    assert link.fence_answered(1.0)  # 250 kB in a second: 2 Mbit/s
    assert link.level == level_for(2_000)
    assert link.describe(1.0) == "link timed by the terminal's answers at 2000 kbit/s"


def test_a_kernel_that_does_not_time_the_limits_falls_back_to_timing() -> None:
    old = Connection()
    old.times_limits = False
    link = LinkQuality(lambda: old, lambda transport: old.info())
    link.observe(0.0)
    assert link.timed and link.tcp is None


def test_nothing_is_decided_before_there_is_a_transport() -> None:
    transport: list[object] = []
    conn = Connection()
    link = LinkQuality(lambda: transport[0] if transport else None, lambda t: conn.info())
    link.observe(0.0)
    assert not link.timed and link.tcp is None
    transport.append(conn)
    link.observe(0.1)
    assert link.tcp is not None and not link.timed


def test_the_link_is_read_again_once_enough_was_written_or_the_window_passed() -> None:
    """Small updates (a typed character, a clock) leave the link unread for a
    window; a large one has it read at the usual spacing."""
    conn = Connection()
    conn.now = 0.0
    reads: list[float] = []

    def counted(transport: object) -> TcpInfo:
        reads.append(conn.now)
        return conn.info()

    link = LinkQuality(lambda: conn, counted)
    written, now = 0, 0.0
    link.observe(now, written)
    assert reads == [0.0]
    while now < WINDOW - 0.1:  # 300 bytes every 100 ms
        now += 0.1
        conn.now = now
        written += 300
        link.observe(now, written)
    assert reads == [0.0]
    now = conn.now = WINDOW
    link.observe(now, written)
    assert reads == [0.0, WINDOW]
    now = conn.now = WINDOW + READ_SPACING / 2  # a large update, within the spacing
    written += READ_BYTES
    link.observe(now, written)
    assert len(reads) == 2
    now = conn.now = WINDOW + READ_SPACING
    link.observe(now, written)
    assert reads[-1] == WINDOW + READ_SPACING
    link.observe(now + READ_SPACING, None)  # not counted: read at the spacing
    assert len(reads) == 4
