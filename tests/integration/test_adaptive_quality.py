"""JPEG quality follows each terminal's link, not its CPU: real Xvnc, thinserve, TCP and links.

A private LAN of network namespaces (tests/support/netns.py ``Lan``):
thinserve runs in this process with its terminal port in the server's
namespace, and reaches its desktop, a real Xvnc showing photo-like
pictures, through a Unix socket.  Two terminals (thinserve's own RFB
client), both asking for Tight with JPEG quality level 9, watch it:

- fast: on the server namespace's loopback;
- slow: in a namespace of its own, behind a veth link whose both ends are
  shaped to 2 Mbit/s by a real queue discipline (netem's rate where the
  kernel has it, else a token bucket filter: tests/support/shaping.py),
  over VeNCrypt X509None as every terminal beyond loopback.

The slow terminal's session reads its socket's TCP_INFO: the network holds
the data back, so from the first full-screen picture on it encodes at the
level 2 Mbit/s carries, while pictures keep coming; the fast one keeps 9.
Once the limit is lifted the quality comes back.

A terminal on loopback that reads its socket slowly, as one whose CPU is
busy does, answers late: timing its answers would lower its quality, yet
it keeps level 9, since the kernel sees its own window, not the network,
holding the data back.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, threads

from protocols.rfb.client import ClientConnection, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding, VeNCryptSubtype
from tests.support.need import need
from tests.support.netns import Lan, NetNamespace, lan_problem
from tests.support.pixels import rgb_to_u32, u32_to_rgb
from tests.support.rawpeer import connect_raw
from tests.support.reactor import running_reactor, transport_of
from tests.support.server import first_free, start_thinserve
from tests.support.shaping import shape, tc_problem, unshape
from tests.support.terminal import PLAIN_VIEWER, Terminal
from tests.support.waiting import wait_until
from tests.support.webserve import self_signed_tls, serve_frame
from tests.support.websocket import WebSocketStream, head_complete, split_response, upgrade_request
from tests.support.xvnc import XvncServer
from tests.unit.content import desktop_frame
from thinserve import rfbclient
from thinserve.config import Config, DesktopConfig
from thinserve.relay.bandwidth import KEEP_MARGIN, LEVEL_KBPS, MAX_LEVEL, level_for
from thinserve.relay.session import TerminalSession
from thinserve.relay.tcpinfo import socket_of
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

SIZE = (640, 480)
SLOW_LINK = 2_000_000  # bits per second each way between the slow terminal and the server
BASE_ENCODINGS = (
    Encoding.TIGHT,
    Encoding.COPYRECT,
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
)
ENCODINGS = (*BASE_ENCODINGS, Encoding.JPEG_QUALITY_9)
FAST = "127.0.0.2"  # on the server namespace's loopback
SLOW_HOST = 2  # the slow terminal's host number on the LAN
READER = "127.0.0.4"  # the terminal that reads slowly (on loopback)
READ_PAUSE = 0.1  # seconds it leaves its socket alone after each read (at most 64 KiB)
TILE = 16
# Mean difference per 8-bit channel allowed in every 16x16 tile.  JPEG at the
# level a 2 Mbit/s link gets (4) leaves up to ~17 in a tile of a photo; two
# different pictures here differ by more than 24 in 99 % of tiles.
TOLERANCE = 24.0
SESSION_LOG = "thinserve.relay.session"
MAX_FRAMES = 60  # pictures painted at most while waiting for the quality to move
# Seconds from the first picture of a photo stream to the slow terminal's
# lower level: its first full-screen update at level 9 (about 495 KB) takes
# two seconds over the link, and the level is decided before the next one.
# Generous for a busy machine.
DROP_WITHIN = 10.0
READER_FRAMES = 8  # pictures the slow reader must take in at its own level
LOGGED = re.compile(
    r"JPEG quality level (\d) \(asked for 9\): link delivers (\d+) kbit/s, "
    r"network-limited (\d+)% of the last \d+\.\d s"
)


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
        self.frame = photo_frame(*SIZE, seed=0)

    def session(self, name: str) -> TerminalSession:
        assert self.ts.hub is not None
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

    async def until(self, check: Callable[[], bool], what: str) -> int:
        """Change the picture until ``check`` holds (at most MAX_FRAMES times); how many."""
        for painted in range(MAX_FRAMES):
            if check():
                return painted
            await self.show()
        raise AssertionError(f"{what}: not after {MAX_FRAMES} pictures")


def quality_logs(caplog: pytest.LogCaptureFixture, who: str) -> list[logging.LogRecord]:
    """What the sessions logged about terminal ``who``'s JPEG quality."""
    return [
        r
        for r in caplog.records
        if r.name == SESSION_LOG and "JPEG" in r.getMessage() and who in r.getMessage()
    ]


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


# -- the shaped LAN ---------------------------------------------------------------------------
class LanTerminal(Terminal):
    """A terminal whose socket belongs to a network namespace."""

    async def connect_from(
        self,
        netns: NetNamespace,
        address: str,
        port: int,
        source: str,
        options: rfbclient.ClientOptions = PLAIN_VIEWER,
    ) -> LanTerminal:
        endpoint = f"{rfbclient.tcp(address, port)}:bindAddress={source}"
        with netns.entered():  # the socket is made now, in the namespace
            connecting = rfbclient.connect(endpoint, options, self._on_event)
        self.proto = await connecting
        self.proto.closed.addBoth(self._closed)
        await wait_until(lambda: self.updates > 0, 60, "the first update")
        return self


@dataclass
class Site:
    """The LAN, the desktop behind its Unix socket, and thinserve once started."""

    lan: Lan
    xvnc: XvncServer
    desktop_socket: Path
    workdir: Path
    ts: ThinServe | None = None

    @property
    def slow_address(self) -> str:
        return self.lan.address(SLOW_HOST)

    @property
    def slow_host(self) -> NetNamespace:
        return self.lan.hosts["slow"]

    def shape(self) -> str:
        """Limit both directions between the slow terminal and the server; the qdisc."""
        kind = shape(self.lan.server, "lan-slow", SLOW_LINK)
        shape(self.slow_host, "eth0", SLOW_LINK)
        return kind

    def unshape(self) -> None:
        unshape(self.lan.server, "lan-slow")
        unshape(self.slow_host, "eth0")

    async def start(self) -> ThinServe:
        desktops = (DesktopConfig("d1", f"unix:{self.desktop_socket}"),)
        config = Config(
            listen=("tcp:port=0",),  # the namespace's loopback and its LAN address
            web_listen=(),
            dashboard_listen=(),
            admin_socket="",
            database=":memory:",
            broker=first_free(desktops),
            discovery=False,
            address_pairing=("127.0.0.0/8", f"{self.lan.subnet}.0/24"),
            desktops=desktops,
            local_desktops=(),
            state_dir=self.workdir / "state",
            runtime_dir=self.workdir / "run",
            source="test",
        )
        self.ts = ThinServe(config, reactor)
        with self.lan.server.entered():  # its listening socket belongs to the server's namespace
            await self.ts.startService()
        return self.ts

    async def terminals(self, continuous: bool = False) -> Desk:
        """The fast and the slow terminal, both watching d1."""
        assert self.ts is not None and self.ts.certificate is not None
        assert self.ts.hub is not None
        port = self.ts.port_numbers[0]
        fast = LanTerminal(ENCODINGS, continuous)
        await fast.connect_from(self.lan.server, "127.0.0.1", port, FAST)
        secure = rfbclient.ClientOptions(
            methods=(VeNCryptSubtype.X509_NONE,), ca_file=self.ts.certificate.cert_file
        )
        slow = LanTerminal(ENCODINGS, continuous)
        server = self.lan.server_address
        await slow.connect_from(self.slow_host, server, port, self.slow_address, secure)
        self.ts.hub.shadow(f"viewer-{self.slow_address}", "d1", actor="admin")  # both watch d1
        desk = Desk(self.xvnc, self.ts, {FAST: fast, self.slow_address: slow})
        await desk.show(desktop_frame(*SIZE))  # an office picture: both see d1
        return desk


@pytest.fixture
def site(xvnc: Callable[..., XvncServer], tmp_path: Path) -> Iterator[Site]:
    problem = lan_problem() or tc_problem()
    need(problem is None, f"a shaped LAN of network namespaces cannot be made: {problem}")
    desktop_socket = tmp_path / "xvnc.sock"
    server = xvnc(size=SIZE, extra_args=("-rfbunixpath", str(desktop_socket)))
    server.paint(desktop_frame(*SIZE))
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    lan = Lan(subnet, prefix="tsaq")
    site = Site(lan, server, desktop_socket, tmp_path)
    try:
        lan.create()
        lan.add_host("slow", SLOW_HOST)
        yield site
    finally:
        lan.delete()


async def stop(site: Site, desk: Desk | None) -> None:
    if desk is not None:
        for term in desk.terms.values():
            term.close()
    if site.ts is not None:
        await site.ts.stopService()


@pytest_twisted.ensureDeferred
async def test_jpeg_quality_follows_each_terminals_link(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SESSION_LOG)
    desk: Desk | None = None
    try:
        await site.start()
        qdisc = site.shape()
        desk = await site.terminals()
        slow_name = site.slow_address
        fast_session, slow_session = desk.session(FAST), desk.session(slow_name)
        assert slow_session.link.tcp is not None  # TCP_INFO under TLS
        assert fast_session.link.tcp is not None
        assert quality(slow_session) == MAX_LEVEL  # the office picture did not make it drop

        # A stream of full-screen photos: the slow link's level drops early,
        # and pictures keep coming.
        started = time.time()
        painted = await desk.until(lambda: quality(slow_session) != MAX_LEVEL, "a lower level")
        said = quality_logs(caplog, slow_name)
        assert said, "no JPEG quality line logged for the slow terminal"
        took = said[0].created - started
        log.info("%s link: level %s after %.2f s", qdisc, quality(slow_session), took)
        assert took < DROP_WITHIN, f"the level dropped {took:.1f} s after the stream began"
        assert painted <= 2  # the first picture, or the one right after it

        # The log line names what was measured, and the table's level for it.
        shown = LOGGED.search(said[0].getMessage())
        assert shown is not None, said[0].getMessage()
        low, kbps = int(shown.group(1)), int(shown.group(2))
        assert low == level_for(kbps) < MAX_LEVEL
        assert 0.5 < kbps * 1000 / SLOW_LINK < 1.5
        assert int(shown.group(3)) >= 40

        # Over 2 Mbit/s: far fewer bytes per picture, and they keep coming.
        sent = await desk.show()
        sent = await desk.show()
        assert quality(slow_session) == low
        assert quality(fast_session) == MAX_LEVEL
        assert sent[slow_name] * 4 < sent[FAST]
        log.info("a photo: %d bytes at level %s, %d at 9", sent[slow_name], low, sent[FAST])
        # Two terminals watch this desktop: the fast one does not trade
        # bytes for time (zlib level 1), each terminal would get the bytes.
        for session in (fast_session, slow_session):
            assert session.proto is not None and not session.proto.conn.rect_encoder.quick

        # The terminal's own level stays the ceiling, also after it changes.
        slow = desk.terms[slow_name]
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
        site.unshape()
        lifted = time.time()
        await desk.until(lambda: quality(slow_session) == MAX_LEVEL, "the quality to recover")
        log.info("limit lifted: level 9 again after %.1f s", time.time() - lifted)
        sent = await desk.show()
        assert sent[slow_name] > sent[FAST] * 0.8
        assert quality(fast_session) == MAX_LEVEL
        assert not quality_logs(caplog, FAST)  # never adapted
    finally:
        await stop(site, desk)


@pytest_twisted.ensureDeferred
async def test_a_terminal_on_continuous_updates_is_measured_the_same_way(site: Site) -> None:
    """No requests pace its updates, and no timing fences are needed: TCP_INFO tells."""
    desk: Desk | None = None
    try:
        await site.start()
        site.shape()
        desk = await site.terminals(continuous=True)
        fast_session, slow_session = desk.session(FAST), desk.session(site.slow_address)
        for session in (fast_session, slow_session):
            assert session.proto is not None and session.proto.conn.continuous_updates
        await desk.until(lambda: quality(slow_session) != MAX_LEVEL, "the slow link's level")
        assert slow_session.link.tcp is not None and not slow_session.link.fences.out
        assert quality(fast_session) == MAX_LEVEL
    finally:
        await stop(site, desk)


# -- a terminal that reads slowly, on loopback -----------------------------------------------------
class SlowReader(rfbclient.RFBClientProtocol):
    """thinserve's client, reading its socket as a terminal with a busy CPU
    does: after each read (at most 64 KiB) it leaves the socket alone for
    READ_PAUSE seconds, and its kernel's receive window closes meanwhile."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.transport is not None:
            transport_of(self).pauseProducing()
            running_reactor().callLater(READ_PAUSE, self._read_again)

    def _read_again(self) -> None:
        if self.transport is not None and self.connected:
            transport_of(self).resumeProducing()


async def connect_slow_reader(term: Terminal, port: int) -> Terminal:
    endpoint = endpoints.TCP4ClientEndpoint(
        running_reactor(), "127.0.0.1", port, bindAddress=(READER, 0)
    )
    proto = SlowReader(PLAIN_VIEWER, term._on_event)
    await endpoints.connectProtocol(endpoint, proto)
    term.proto = proto
    proto.closed.addBoth(term._closed)
    await wait_until(lambda: term.updates > 0, 30, "the first update")
    return term


@pytest_twisted.ensureDeferred
async def test_a_terminal_that_reads_slowly_keeps_the_level_it_asked_for(
    xvnc: Callable[..., XvncServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SESSION_LOG)
    server = xvnc(size=SIZE)
    server.paint(photo_frame(*SIZE, seed=0))
    ts = await start_thinserve([DesktopConfig("d1", f"{server.host}:{server.port}")])
    term = Terminal(ENCODINGS)
    try:
        await connect_slow_reader(term, ts.port_numbers[0])
        desk = Desk(server, ts, {READER: term})
        session = desk.session(READER)
        started, sent = time.monotonic(), 0
        for _ in range(READER_FRAMES):
            sent += (await desk.show())[READER]
            assert quality(session) == MAX_LEVEL
        seconds = time.monotonic() - started
        # It took its pictures in slowly: timing its answers would have
        # taken its link for one too slow for level 9.
        kbps = sent * 8 / 1000 / seconds
        assert kbps < LEVEL_KBPS[MAX_LEVEL] * KEEP_MARGIN, f"the reader took in {kbps:.0f} kbit/s"
        # The kernel saw why: the terminal's window held the data back.
        assert session.link.tcp is not None
        reading = session.link.tcp.last
        assert reading is not None and reading.receiver > reading.network
        assert not quality_logs(caplog, READER)
        log.info("slow reader: %.0f kbit/s, level %s kept", kbps, quality(session))
    finally:
        term.close()
        await ts.stopService()


# -- a browser terminal: RFB in WebSocket messages, over TLS ---------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_browser_terminals_link_is_read_under_websocket_and_tls(tmp_path: Path) -> None:
    """The session's transport is the WebSocket, over TLS, over TCP: the socket is found."""
    served = await serve_frame(photo_frame(*SIZE, seed=1), tls=self_signed_tls(tmp_path))
    try:
        peer = await connect_raw(served.number, tls=True)
        origin = f"https://127.0.0.1:{served.number}"
        transport_of(peer).write(upgrade_request(served.number, origin))
        status, _, _ = split_response(await peer.wait_for(head_complete))
        assert status == 101
        stream, client = WebSocketStream(peer), ClientConnection()
        updates = 0
        while updates < 2:  # the first update, and one answering a request timed by nothing
            for _, payload in await stream.next_frames(timeout=10):
                for event in client.receive_data(payload):
                    if isinstance(event, ServerInitReceived):
                        client.set_encodings([Encoding.TIGHT, Encoding.JPEG_QUALITY_9])
                        client.request_update(incremental=False)
                    elif isinstance(event, UpdateDone):
                        updates += 1
                        served.source.set_frame(photo_frame(*SIZE, seed=1 + updates))
                        client.request_update(incremental=True)
            stream.send(client.data_to_send())
        session = served.sessions[0]
        assert session.proto is not None
        assert isinstance(socket_of(session.proto.transport), socket.socket)
        assert session.link.tcp is not None and not session.link.timed
        transport_of(peer).loseConnection()
    finally:
        await served.port.stopListening()
