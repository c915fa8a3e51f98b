"""The link meter and the JPEG quality policy, on simulated links with times passed in."""

from __future__ import annotations

import itertools

import pytest

from thinserve.relay.bandwidth import (
    KEEP_MARGIN,
    LEVEL_KBPS,
    MAX_LEVEL,
    MIN_SAMPLE_BYTES,
    PROBE_MAX_BYTES,
    RAISE_HOLD,
    RAISE_MARGIN,
    SLOW_EVIDENCE,
    SMOOTHING,
    FenceBatch,
    LinkMeter,
    LinkQuality,
    QualityPolicy,
    Sample,
    effective_quality,
    level_for,
)

FRAME = 60_000  # bytes of one full-screen update in the simulations


def kbps(bytes_per_second: float) -> float:
    return bytes_per_second * 8 / 1000


def bytes_per_second(kbit: float) -> float:
    return kbit * 1000 / 8


def sample_at(kbit: float, seconds: float) -> Sample:
    """A sample of a link running at ``kbit`` kbit/s that took ``seconds``."""
    return Sample(round(bytes_per_second(kbit) * seconds), seconds)


class Link:
    """A simulated link: an update of n bytes is answered rtt + n / rate later."""

    def __init__(self, rate: float, rtt: float, now: float = 100.0) -> None:
        self.rate = rate  # bytes per second
        self.rtt = rtt
        self.now = now

    def deliver(self, meter: LinkMeter | LinkQuality, size: int, think: float = 0.0) -> bool:
        """Send one update, then take the terminal's next request; what the meter said."""
        meter.update_sent(size, self.now)
        self.now += self.rtt + size / self.rate
        answer = meter.request_arrived(self.now)
        self.now += think  # nothing to send for a while
        return bool(answer)


# -- the meter --------------------------------------------------------------------------
def test_rate_is_bytes_over_the_time_to_the_next_request() -> None:
    meter = LinkMeter()
    meter.update_sent(100_000, 10.0)
    assert meter.request_arrived(10.5) == Sample(100_000, 0.5)
    assert meter.rate == pytest.approx(100_000 / 0.5)
    assert meter.kbps == pytest.approx(kbps(100_000 / 0.5))


def test_small_updates_time_the_round_trip_not_the_rate() -> None:
    meter = LinkMeter()
    link = Link(rate=bytes_per_second(2_000), rtt=0.05)
    assert not link.deliver(meter, PROBE_MAX_BYTES // 2)
    assert not link.deliver(meter, MIN_SAMPLE_BYTES - 1)
    assert meter.rate is None and meter.samples == 0
    probe_time = 0.05 + (PROBE_MAX_BYTES // 2) / link.rate
    assert meter.min_rtt == pytest.approx(probe_time)


def test_the_round_trip_is_taken_out_of_big_updates() -> None:
    """A 50 ms link at 2 Mbit/s reads as 2 Mbit/s, not as what latency leaves of it."""
    meter = LinkMeter()
    link = Link(rate=bytes_per_second(2_000), rtt=0.05)
    link.deliver(meter, 64)  # a cursor move: times the round trip
    assert link.deliver(meter, FRAME)
    measured = meter.kbps
    assert measured == pytest.approx(2_000, rel=0.02)
    naive = LinkMeter()  # never saw a small update: latency counts as transfer time
    link.deliver(naive, FRAME)
    assert naive.kbps is not None and measured is not None and naive.kbps < measured


def test_a_request_without_an_update_in_flight_measures_nothing() -> None:
    meter = LinkMeter()
    assert meter.request_arrived(1.0) is None
    meter.update_sent(FRAME, 2.0)
    assert meter.request_arrived(2.2) is not None
    assert meter.request_arrived(2.3) is None  # a second request: nothing was sent since
    assert meter.samples == 1


def test_only_the_latest_update_is_timed() -> None:
    """Two updates before a request: the time belongs to the second one only."""
    meter = LinkMeter()
    meter.update_sent(FRAME, 1.0)
    meter.update_sent(FRAME, 1.4)
    sample = meter.request_arrived(1.5)
    assert sample is not None and sample.size == FRAME
    assert sample.seconds == pytest.approx(0.1)


def test_a_clock_going_backwards_measures_nothing() -> None:
    meter = LinkMeter()
    meter.update_sent(FRAME, 5.0)
    assert meter.request_arrived(4.0) is None
    assert meter.rate is None


def test_a_quick_sample_moves_the_average_by_the_least_weight() -> None:
    meter = LinkMeter()
    link = Link(rate=1_000_000, rtt=0.0)
    for _ in range(30):
        link.deliver(meter, FRAME)  # 60 ms each
    assert meter.rate == pytest.approx(1_000_000, rel=0.001)
    link.rate = 2_000_000
    link.deliver(meter, FRAME)  # 30 ms: weighs the least
    assert meter.rate == pytest.approx(1_000_000 + SMOOTHING * 1_000_000, rel=0.01)


def test_one_long_slow_update_outweighs_many_quick_ones() -> None:
    """The link slowed down: one two-second update is enough to tell."""
    meter = LinkMeter()
    link = Link(rate=10_000_000, rtt=0.0)
    for _ in range(50):
        link.deliver(meter, FRAME)
    before = meter.rate
    assert before is not None
    link.rate = 250_000
    link.deliver(meter, 500_000)  # two seconds
    assert meter.rate is not None
    assert (before - meter.rate) / (before - 250_000) > 0.95  # nearly all the way


# -- levels and the policy -----------------------------------------------------------------
def test_each_level_needs_more_than_the_one_below() -> None:
    assert len(LEVEL_KBPS) == MAX_LEVEL + 1 and LEVEL_KBPS[0] == 0
    assert all(low < high for low, high in itertools.pairwise(LEVEL_KBPS))


@pytest.mark.parametrize("kbit", [0, 50, 999, 1_000, 1_799, 2_500, 5_000, 29_999, 30_000, 1e6])
def test_level_for_a_rate_is_the_highest_it_carries(kbit: float) -> None:
    level = level_for(kbit)
    assert LEVEL_KBPS[level] <= kbit
    assert level == MAX_LEVEL or kbit < LEVEL_KBPS[level + 1]


def test_one_slow_full_screen_update_drops_the_level() -> None:
    policy = QualityPolicy()
    assert policy.level == MAX_LEVEL  # unmeasured: nothing held back
    slow = sample_at(2_000, seconds=2.0)
    assert policy.decide(slow, slow.kbps, now=0.0) == level_for(2_000) < MAX_LEVEL


def test_a_hiccup_is_not_a_slow_link() -> None:
    """Quick updates that came back late (a busy moment) do not drop the level."""
    policy = QualityPolicy()
    hiccup = sample_at(3_000, seconds=SLOW_EVIDENCE * 0.4)
    assert policy.decide(hiccup, hiccup.kbps, now=0.0) == MAX_LEVEL
    assert policy.decide(hiccup, hiccup.kbps, now=0.1) == MAX_LEVEL
    fast = sample_at(400_000, seconds=0.01)
    assert policy.decide(fast, 3_000, now=0.2) == MAX_LEVEL  # the slow run is broken
    assert policy.decide(hiccup, hiccup.kbps, now=0.3) == MAX_LEVEL
    assert policy.decide(hiccup, hiccup.kbps, now=0.4) == MAX_LEVEL
    assert policy.decide(hiccup, hiccup.kbps, now=0.5) < MAX_LEVEL  # three in a row: slow


def test_a_level_is_kept_until_the_rate_falls_clearly_below_its_need() -> None:
    policy = QualityPolicy()
    first = sample_at(LEVEL_KBPS[6], seconds=1.0)
    assert policy.decide(first, first.kbps, now=0.0) == 6
    kept = sample_at(LEVEL_KBPS[6] * KEEP_MARGIN * 1.01, seconds=1.0)
    assert policy.decide(kept, kept.kbps, now=10.0) == 6
    below = sample_at(LEVEL_KBPS[6] * KEEP_MARGIN * 0.99, seconds=1.0)
    assert policy.decide(below, below.kbps, now=11.0) == level_for(below.kbps) < 6


def test_raising_needs_a_margin_and_a_quiet_spell() -> None:
    policy = QualityPolicy()
    first = sample_at(LEVEL_KBPS[4], seconds=1.0)
    assert policy.decide(first, first.kbps, now=0.0) == 4
    quick = sample_at(LEVEL_KBPS[4], seconds=0.05)  # the samples matter less than the average
    barely = LEVEL_KBPS[5] * RAISE_MARGIN * 0.99
    assert policy.decide(quick, barely, now=RAISE_HOLD * 10) == 4  # not enough margin
    clear = LEVEL_KBPS[5] * RAISE_MARGIN * 1.01
    raised = policy.decide(quick, clear, now=RAISE_HOLD * 10)
    assert raised == level_for(clear) > 4  # the level the rate carries, as the table says
    much_faster = LEVEL_KBPS[MAX_LEVEL] * RAISE_MARGIN * 2
    soon = RAISE_HOLD * 10 + RAISE_HOLD / 2
    assert policy.decide(quick, much_faster, now=soon) == raised  # too soon
    assert policy.decide(quick, much_faster, now=RAISE_HOLD * 11) == MAX_LEVEL


def test_a_rate_wobbling_around_a_threshold_does_not_flap() -> None:
    policy = QualityPolicy()
    first = sample_at(LEVEL_KBPS[6], seconds=1.0)
    policy.decide(first, first.kbps, now=0.0)
    changes, level = 0, policy.level
    for step in range(200):
        rate = LEVEL_KBPS[6] * (1.15 if step % 2 else 0.85)  # +-15 % around level 6's need
        new = policy.decide(sample_at(rate, seconds=0.5), rate, now=0.5 * step)
        changes += new != level
        level = new
    assert changes == 0 and level == 6


# -- what the terminal asked for -----------------------------------------------------------
@pytest.mark.parametrize("requested", range(MAX_LEVEL + 1))
@pytest.mark.parametrize("link", range(MAX_LEVEL + 1))
def test_the_quality_never_exceeds_the_terminals_request(requested: int, link: int) -> None:
    quality = effective_quality(requested, link)
    assert quality is not None and quality <= requested and quality <= link
    assert quality in (requested, link)


@pytest.mark.parametrize("link", range(MAX_LEVEL + 1))
def test_no_quality_asked_means_no_jpeg(link: int) -> None:
    assert effective_quality(None, link) is None


# -- meter and policy together, as a session uses them -------------------------------------------
def test_a_two_megabit_link_settles_at_the_level_two_megabits_carry() -> None:
    quality = LinkQuality()
    link = Link(rate=bytes_per_second(2_000), rtt=0.02)
    link.deliver(quality, 200)
    changed = [link.deliver(quality, FRAME, think=0.5) for _ in range(30)]
    assert changed.count(True) == 1  # dropped once, then steady
    assert quality.level == level_for(2_000)
    assert quality.quality(9) == level_for(2_000)
    assert quality.quality(2) == 2  # the terminal asked for less: it gets what it asked
    assert quality.quality(None) is None


def test_quality_recovers_when_the_link_speeds_up_one_hold_between_raises() -> None:
    quality = LinkQuality()
    link = Link(rate=bytes_per_second(1_500), rtt=0.01)
    for _ in range(10):
        link.deliver(quality, FRAME, think=0.2)
    assert quality.level < MAX_LEVEL
    link.rate = bytes_per_second(500_000)
    raised_at: list[float] = []
    start = link.now
    while quality.level < MAX_LEVEL and link.now - start < 60:
        if link.deliver(quality, FRAME, think=0.2):
            raised_at.append(link.now)
    assert quality.level == MAX_LEVEL
    assert len(raised_at) >= 2  # the average climbs over several samples
    gaps = [b - a for a, b in itertools.pairwise(raised_at)]
    assert all(gap >= RAISE_HOLD for gap in gaps)


def test_a_fast_link_with_hiccups_keeps_the_top_level() -> None:
    """A LAN terminal whose answers are often late (a busy server) stays at 9."""
    quality = LinkQuality()
    link = Link(rate=bytes_per_second(200_000), rtt=0.001)
    changed, lowest = [], float("inf")
    for step in range(100):
        link.rtt = 0.001 if step % 6 == 0 else 0.04  # five answers in six 40 ms late
        changed.append(link.deliver(quality, FRAME, think=0.05))
        lowest = min(lowest, quality.kbps or lowest)
    assert lowest < LEVEL_KBPS[MAX_LEVEL] * KEEP_MARGIN  # the average alone would drop
    assert not any(changed)
    assert quality.level == MAX_LEVEL and quality.quality(9) == 9


def test_fences_time_every_update_pushed_since_the_previous_fence() -> None:
    fences = FenceBatch()
    assert fences.pushed(10_000, started=1.0) == (10_000, 1.0)  # a fence goes at once
    assert fences.pushed(20_000, started=1.1) is None  # the first fence is still out
    assert fences.pushed(30_000, started=1.2) is None
    assert fences.answered(3.0)
    assert not fences.answered(3.5)  # no fence out: nothing to answer
    # The two updates behind the first fence could only cross once it was answered.
    assert fences.pushed(5_000, started=3.2) == (55_000, 3.0)
    assert fences.answered(4.0)
    assert fences.pushed(1_000, started=6.0) == (1_000, 6.0)  # an idle link: from the send


def test_a_link_on_continuous_updates_is_measured_from_fence_answers() -> None:
    link = LinkQuality()
    assert link.pushed(250_000, started=0.0)  # send a fence
    assert not link.pushed(250_000, started=0.1)
    link.fence_answered(1.0)  # 250 kB in 1 s
    assert link.kbps is not None and round(link.kbps) == 2000
