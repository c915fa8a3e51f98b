"""Prometheus metrics of a real relay: an Xvnc desktop, thinserve, a terminal.

/metrics is scraped over HTTP before and after a known change on the
desktop; the counters must move by exactly what the terminal's session
sent and what the terminal decoded.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.web.server import Site

from protocols.rfb.client import ClientEvent, UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.updatestats import KINDS, UPDATE_HEADER
from tests.integration.test_rfb_interop import office_frame
from tests.support.server import start_thinserve
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from tests.support.xvnc import XvncServer
from tests.unit.content import desktop_frame, noise_frame
from thinserve import metrics, rfbclient
from thinserve.config import DesktopConfig
from thinserve.relay.session import TerminalSession
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

SIZE = (640, 480)
ZRLE_TERMINAL = (
    Encoding.ZRLE,
    Encoding.HEXTILE,
    Encoding.RAW,
    Encoding.COPYRECT,
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
)
TIGHT_TERMINAL = (
    Encoding.TIGHT,
    Encoding.JPEG_QUALITY_0 + 8,
    Encoding.RAW,
    Encoding.COPYRECT,
    Encoding.CURSOR,
)
# How the terminal's decoder names what metrics count apart (tight-jpeg is Tight on the wire).
WIRE_NAMES = {
    Encoding.RAW: ("raw",),
    Encoding.COPYRECT: ("copyrect",),
    Encoding.RRE: ("rre",),
    Encoding.HEXTILE: ("hextile",),
    Encoding.ZLIB: ("zlib",),
    Encoding.TIGHT: ("tight", "tight-jpeg"),
    Encoding.ZRLE: ("zrle",),
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class RecordingTerminal(Terminal):
    """A terminal that also keeps the encodings of every update it decoded."""

    def __init__(self, encodings: Sequence[int]) -> None:
        super().__init__(encodings)
        self.seen: list[tuple[int, ...]] = []  # per update, its rectangles' encodings

    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        if isinstance(event, UpdateDone):
            self.seen.append(event.encodings)
        super()._on_event(proto, event)


@dataclass(frozen=True)
class Moment:
    """The metrics and what the session and the terminal counted, at one time."""

    samples: Samples
    bytes_sent: int
    updates_sent: int
    updates_seen: int

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, kinds: Sequence[str]) -> float:
        return sum(self.value(name, encoding=kind) for kind in kinds)


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        body: bytes = answer.read()
    return body.decode()


class Scraper:
    """/metrics on a loopback port, scraped once the relay is quiet."""

    def __init__(self, ts: ThinServe, term: RecordingTerminal) -> None:
        self.ts = ts
        self.term = term
        self.port = reactor.listenTCP(0, Site(metrics.MetricsResource()), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/metrics"

    @property
    def session(self) -> TerminalSession:
        assert self.ts.hub is not None
        (terminal,) = self.ts.hub.terminals.values()
        return terminal.session

    def quiet(self) -> bool:
        """Nothing on its way: the terminal decoded every update its session sent."""
        session = self.session
        return session.stream is None and self.term.updates == session.updates_sent

    def counts(self) -> tuple[int, int, int]:
        session = self.session
        return session.bytes_sent, session.updates_sent, self.term.updates

    async def moment(self) -> Moment:
        """A scrape during which nothing was sent (tried again if something was)."""
        while True:
            await wait_until(self.quiet, 20, "the terminal to take in every update sent")
            before = self.counts()
            text = await threads.deferToThread(fetch, self.url)
            if self.quiet() and self.counts() == before:
                return Moment(parse(text), *before)

    async def close(self) -> None:
        await self.port.stopListening()


def channels(frame: np.ndarray) -> np.ndarray:
    return np.stack([(frame >> shift) & 0xFF for shift in (16, 8, 0)]).astype(np.int16)


async def shows(term: Terminal, want: np.ndarray, lossy: bool) -> None:
    """Wait until the terminal shows ``want``: exactly, or as near as JPEG gets
    (the two pictures of this test differ by about 60 per channel on average)."""
    if not lossy:
        await term.wait_screen(want)
        return

    def off() -> float:
        shown = term.framebuffer
        if shown.shape != want.shape:
            return 255.0
        return float(np.abs(channels(shown) - channels(want)).mean())

    await wait_until(
        lambda: off() < 4.0,
        20,
        lambda: f"the terminal to show the picture, up to JPEG's losses (off by {off():.1f})",
    )


def changed_frame() -> np.ndarray:
    """A desktop-like picture with a block of noise: several encodings at once."""
    frame = desktop_frame(*SIZE, seed=11)
    frame[100:228, 200:456] = noise_frame(256, 128, seed=3)
    return frame


@pytest.mark.parametrize(
    ("encodings", "jpeg"), [(ZRLE_TERMINAL, False), (TIGHT_TERMINAL, True)], ids=["zrle", "tight"]
)
@pytest_twisted.ensureDeferred
async def test_counters_move_by_what_the_terminal_was_sent(
    xvnc: Callable[..., XvncServer], encodings: Sequence[int], jpeg: bool
) -> None:
    server = xvnc(size=SIZE)
    server.paint(office_frame(*SIZE))
    ts = await start_thinserve([DesktopConfig("d1", f"{server.host}:{server.port}")])
    assert ts.hub is not None
    metrics.bind(ts.hub)
    term = RecordingTerminal(encodings)
    scraper: Scraper | None = None
    try:
        # Live first: a terminal without DesktopSize keeps the size it was first given.
        await wait_until(lambda: all(u.live for u in ts.upstreams), 30, "thinserve's desktop link")
        await term.connect(ts.port_numbers[0])
        await shows(term, office_frame(*SIZE), lossy=jpeg)
        scraper = Scraper(ts, term)
        before = await scraper.moment()
        seen_before = len(term.seen)
        changed = changed_frame()
        await threads.deferToThread(server.paint, changed)
        await shows(term, changed, lossy=jpeg)
        after = await scraper.moment()
        check_counters(before, after, term.seen[seen_before:])
        jpeg_rects = after.value("thinserve_rectangles_sent_total", encoding="tight-jpeg")
        jpeg_rects -= before.value("thinserve_rectangles_sent_total", encoding="tight-jpeg")
        assert (jpeg_rects > 0) == jpeg, f"{jpeg_rects} Tight JPEG rectangles for the noise"

        assert after.value("thinserve_terminals", state="desktop-control") == 1
        assert after.value("thinserve_terminals", state="pairing") == 0
        assert after.value("thinserve_sessions") == 1
        assert after.value("thinserve_desktops", state="running") == 1

        term.close()
        await wait_until(lambda: not ts.hub or not ts.hub.terminals, 20, "the terminal to go")
        gone = parse(await threads.deferToThread(fetch, scraper.url))
        assert gone[("thinserve_terminals", (("state", "desktop-control"),))] == 0
        assert gone[("thinserve_sessions", ())] == 0
    finally:
        term.close()
        if scraper is not None:
            await scraper.close()
        metrics.unbind(ts.hub)
        await ts.stopService()


def check_counters(before: Moment, after: Moment, seen: list[tuple[int, ...]]) -> None:
    """Every counter moved by exactly what the session sent and the terminal decoded."""
    updates = after.updates_sent - before.updates_sent
    assert updates >= 1
    assert after.updates_seen - before.updates_seen == updates == len(seen)
    moved_updates = after.value("thinserve_updates_sent_total") - before.value(
        "thinserve_updates_sent_total"
    )
    assert moved_updates == updates

    moved_bytes = after.total("thinserve_sent_bytes_total", KINDS) - before.total(
        "thinserve_sent_bytes_total", KINDS
    )
    # Each update's own 4-byte header is counted under no encoding.
    assert moved_bytes + UPDATE_HEADER * updates == after.bytes_sent - before.bytes_sent

    decoded = Counter(encoding for update in seen for encoding in update)
    for encoding, names in WIRE_NAMES.items():
        moved = after.total("thinserve_rectangles_sent_total", names) - before.total(
            "thinserve_rectangles_sent_total", names
        )
        assert moved == decoded[encoding], f"{names}: {moved} counted, {decoded[encoding]} decoded"
        # One encode-time observation per update that carried the encoding's pixels.
        if encoding != Encoding.COPYRECT:
            timed = after.total("thinserve_encode_seconds_count", names) - before.total(
                "thinserve_encode_seconds_count", names
            )
            carried = [update for update in seen if encoding in update]
            assert len(carried) <= timed <= len(carried) * len(names)
    assert decoded, "the change reached the terminal as rectangles"

    latency = after.value("thinserve_upstream_latency_seconds_count", desktop="d1") - before.value(
        "thinserve_upstream_latency_seconds_count", desktop="d1"
    )
    assert latency >= 1, "the desktop's update was timed"
    assert after.value("thinserve_upstream_latency_seconds_sum", desktop="d1") > before.value(
        "thinserve_upstream_latency_seconds_sum", desktop="d1"
    )
