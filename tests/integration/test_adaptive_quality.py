"""JPEG quality follows each terminal's link: real Xvnc, real thinserve, real TCP.

Two terminals watch one desktop showing photo-like pictures, both asking
for Tight with JPEG quality level 9: one connected directly on loopback,
one through a token-bucket proxy limited to 2 Mbit/s.  The slow one's
session measures its link and encodes with a lower quality level, so a
full-screen change costs it far fewer bytes; the fast one keeps level 9;
both show the picture.  Once the limit is lifted the quality comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from protocols.rfb.constants import Encoding
from tests.support.pixels import rgb_to_u32, u32_to_rgb
from tests.support.server import start_thinserve
from tests.support.terminal import Terminal
from tests.support.throttle import Throttle
from tests.support.waiting import wait_until
from tests.support.xvnc import XvncServer
from tests.unit.content import desktop_frame
from thinserve.config import DesktopConfig
from thinserve.relay.bandwidth import MAX_LEVEL
from thinserve.relay.session import TerminalSession
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

SIZE = (640, 480)
SLOW_LINK = 2_000_000  # bits per second through the proxy
BASE_ENCODINGS = (
    Encoding.TIGHT,
    Encoding.COPYRECT,
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
)
ENCODINGS = (*BASE_ENCODINGS, Encoding.JPEG_QUALITY_9)
FAST, SLOW = "127.0.0.2", "127.0.0.3"  # thinserve tells the terminals apart by address
TILE = 16
# Mean difference per 8-bit channel allowed in every 16x16 tile.  JPEG at the
# level a 2 Mbit/s link gets (3) leaves up to ~17 in a tile of a photo; two
# different pictures here differ by more than 24 in 99 % of tiles.
TOLERANCE = 24.0
SESSION_LOG = "thinserve.relay.session"
MAX_FRAMES = 60  # pictures painted at most while waiting for the quality to move


def photo_frame(width: int, height: int, seed: int) -> np.ndarray:
    """Continuous tone (waves with a seeded phase) with a little sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    red = 128 + 100 * np.sin(x / 23 + phase[0]) * np.cos(y / 31)
    green = 128 + 100 * np.sin(y / 17 + phase[1])
    blue = 128 + 100 * np.cos((x + y) / 29 + phase[2])
    rgb = np.stack([red, green, blue], axis=-1) + rng.normal(0.0, 3.0, (height, width, 3))
    return rgb_to_u32(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def tile_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Mean absolute difference per 8-bit channel, for each 16x16 tile."""
    diff = np.abs(u32_to_rgb(got).astype(np.int16) - u32_to_rgb(want).astype(np.int16))
    rows, cols = want.shape[0] // TILE, want.shape[1] // TILE
    tiles = diff[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE, 3)
    return tiles.mean(axis=(1, 3, 4))


def shows(term: Terminal, want: np.ndarray) -> bool:
    """The terminal shows ``want``, every tile of it, within a lossy tolerance."""
    fb = term.framebuffer
    return fb.shape == want.shape and bool((tile_error(fb, want) < TOLERANCE).all())


def quality(session: TerminalSession) -> int | None:
    """The JPEG quality level the session's encoders use now."""
    assert session.proto is not None
    return session.proto.conn.rect_encoder.settings.quality


class Desk:
    """The desktop, thinserve, and the terminals watching, with their sessions."""

    def __init__(self, server: XvncServer, ts: ThinServe, terms: dict[str, Terminal]) -> None:
        self.server = server
        self.ts = ts
        self.terms = terms
        self.seed = 0
        self.frame = photo_frame(*SIZE, seed=0)  # what the desktop shows at first

    def session(self, name: str) -> TerminalSession:
        return self.ts.hub.terminals[f"viewer-{name}"].session

    def quiet(self, name: str) -> bool:
        """Nothing left to send to terminal ``name``, and it asks for more."""
        session = self.session(name)
        waiting = session.requested is not None or self.terms[name].continuous
        return not session.damage and not session.copies and session.stream is None and waiting

    async def show(self, frame: np.ndarray | None = None) -> dict[str, int]:
        """Paint ``frame`` (else the next photo); wait until every terminal
        shows it; the bytes each terminal's session sent for it."""
        self.seed += 1
        frame = photo_frame(*SIZE, self.seed) if frame is None else frame
        self.frame = frame
        before = {name: self.session(name).bytes_sent for name in self.terms}
        await threads.deferToThread(self.server.paint, frame)
        for name, term in self.terms.items():
            await wait_until(
                lambda: shows(term, frame) and self.quiet(name),  # noqa: B023
                30,
                lambda: self.why_not(name, frame),  # noqa: B023
            )
        return {name: self.session(name).bytes_sent - before[name] for name in self.terms}

    def why_not(self, name: str, frame: np.ndarray) -> str:
        """What a wait for terminal ``name`` to show ``frame`` found instead."""
        session, fb = self.session(name), self.terms[name].framebuffer
        worst = tile_error(fb, frame).max() if fb.shape == frame.shape else float("nan")
        paused = session.proto is not None and session.proto.paused
        return (
            f"terminal {name} to show the picture (worst tile error {worst:.1f}, "
            f"quality {quality(session)}, damage left {bool(session.damage)}, "
            f"sending {session.stream is not None}, asked {session.requested is not None}, "
            f"paused {paused})"
        )

    async def until(self, check: Callable[[], bool], what: str) -> None:
        """Change the picture until ``check`` holds (at most MAX_FRAMES times)."""
        for _ in range(MAX_FRAMES):
            if check():
                return
            await self.show()
        raise AssertionError(f"{what}: not after {MAX_FRAMES} pictures")


def quality_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the sessions logged about JPEG quality."""
    return [r for r in caplog.records if r.name == SESSION_LOG and "JPEG" in r.getMessage()]


async def set_quality(term: Terminal, session: TerminalSession, level: int | None) -> None:
    """The terminal asks for another JPEG quality level, or none (SetEncodings
    again); returns once thinserve has read it."""
    assert term.proto is not None and session.proto is not None
    conn = term.proto.conn
    jpeg = () if level is None else (Encoding.JPEG_QUALITY_0 + level,)
    conn.set_encodings((*BASE_ENCODINGS, *jpeg))
    term.proto.flush()
    server_side = session.proto.conn
    await wait_until(lambda: server_side.settings.quality == level, 10, "the new encodings")


@pytest_twisted.ensureDeferred
async def test_jpeg_quality_follows_each_terminals_link(
    xvnc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SESSION_LOG)
    server = xvnc(size=SIZE)
    server.paint(photo_frame(*SIZE, seed=0))
    ts = await start_thinserve([DesktopConfig("d1", f"{server.host}:{server.port}")])
    throttle = Throttle(ts.port_numbers[0], SLOW_LINK, source=SLOW)
    try:
        fast = await Terminal(ENCODINGS).connect(ts.port_numbers[0], FAST)
        slow = await Terminal(ENCODINGS).connect(throttle.port)
        ts.hub.shadow(f"viewer-{SLOW}", "d1", actor="admin")  # both watch d1
        desk = Desk(server, ts, {FAST: fast, SLOW: slow})
        fast_session, slow_session = desk.session(FAST), desk.session(SLOW)
        await desk.until(lambda: quality(slow_session) != MAX_LEVEL, "the slow link's quality")

        # Over 2 Mbit/s: a lower level, a rate near the link's, far fewer bytes.
        received = throttle.forwarded_down
        sent = await desk.show()
        received = throttle.forwarded_down - received
        low = quality(slow_session)
        assert low is not None and low < MAX_LEVEL
        assert quality(fast_session) == MAX_LEVEL
        assert slow_session.link.kbps is not None
        assert 0.5 < slow_session.link.kbps * 1000 / SLOW_LINK < 2
        assert received >= sent[SLOW]  # all of it went through the slow link
        assert received * 4 < sent[FAST]
        assert any(
            f"quality level {low} (asked for 9" in r.getMessage() and "kbit/s" in r.getMessage()
            for r in quality_logs(caplog)
        )

        # The terminal's own level stays the ceiling, also after it changes.
        await set_quality(slow, slow_session, 1)
        await desk.show()
        assert quality(slow_session) == 1
        await set_quality(slow, slow_session, MAX_LEVEL)
        await desk.show()
        assert quality(slow_session) == low

        # A terminal that asks for no JPEG gets none, however slow its link.
        await set_quality(slow, slow_session, None)
        patch = np.s_[:120, :160]
        patched = desk.frame.copy()
        patched[patch] = photo_frame(160, 120, seed=99)
        await desk.show(patched)
        assert quality(slow_session) is None
        assert np.array_equal(slow.framebuffer[patch], patched[patch])  # lossless
        await set_quality(slow, slow_session, MAX_LEVEL)

        # Text stays lossless on the slow link.
        office = desktop_frame(*SIZE)
        await desk.show(office)
        text = np.s_[: SIZE[1] * 2 // 3, :]  # above the frame's photo patch
        assert np.array_equal(slow.framebuffer[text], office[text])

        # The link recovers: so does the quality.
        throttle.set_rate(None)
        await desk.until(lambda: quality(slow_session) == MAX_LEVEL, "the quality to recover")
        sent = await desk.show()
        assert sent[SLOW] > sent[FAST] * 0.8
        assert quality(fast_session) == MAX_LEVEL
        assert not any(FAST in r.getMessage() for r in quality_logs(caplog))  # never adapted
        fast.close()
        slow.close()
    finally:
        await throttle.stop()
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_terminal_on_continuous_updates_is_timed_by_fences(xvnc) -> None:
    """No requests pace its updates: a fence behind an update times the link."""
    server = xvnc(size=SIZE)
    server.paint(photo_frame(*SIZE, seed=0))
    ts = await start_thinserve([DesktopConfig("d1", f"{server.host}:{server.port}")])
    throttle = Throttle(ts.port_numbers[0], SLOW_LINK, source=SLOW)
    pushed = (*ENCODINGS, Encoding.FENCE)
    try:
        fast = await Terminal(pushed, continuous=True).connect(ts.port_numbers[0], FAST)
        slow = await Terminal(pushed, continuous=True).connect(throttle.port)
        ts.hub.shadow(f"viewer-{SLOW}", "d1", actor="admin")
        desk = Desk(server, ts, {FAST: fast, SLOW: slow})
        fast_session, slow_session = desk.session(FAST), desk.session(SLOW)
        await wait_until(
            lambda: (
                fast_session.proto is not None
                and fast_session.proto.conn.continuous_updates
                and slow_session.proto is not None
                and slow_session.proto.conn.continuous_updates
            ),
            10,
            "continuous updates on both terminals",
        )
        await desk.until(lambda: quality(slow_session) != MAX_LEVEL, "the slow link's quality")
        assert slow_session.link.kbps is not None
        assert 0.5 < slow_session.link.kbps * 1000 / SLOW_LINK < 2
        assert quality(fast_session) == MAX_LEVEL
        assert fast_session.link.kbps is not None  # measured too, and fast
        assert fast_session.link.kbps * 1000 > 10 * SLOW_LINK
        fast.close()
        slow.close()
    finally:
        await throttle.stop()
        await ts.stopService()
