"""The RFB core against real peers: TigerVNC's Xvnc and viewer, QEMU, vncdotool.

Client role: thinserve's client decodes what Xvnc and QEMU send, in every
encoding each offers, and the result equals what those servers hold (the
image painted on Xvnc; QEMU's own screendump).  Server role: vncdotool and
TigerVNC's vncviewer connect to a server built on the core and get the exact
pixels.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from protocols.rfb.constants import Encoding, SecurityType, VeNCryptSubtype
from protocols.rfb.encodings import Rect
from protocols.rfb.pixelformat import BGR233, RGB565, PixelCodec, PixelFormat
from protocols.rfb.server import ServerConnection
from tests.support.pixels import diff_summary
from tests.support.viewer import tigervnc_viewer_capture
from tests.support.vncdo import vncdo_capture
from tests.support.waiting import wait_until
from tests.unit.content import desktop_frame, noise_frame
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbclient import ClientOptions, fetch_framebuffer, tcp
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.tls import make_self_signed

pytestmark = pytest.mark.integration

XVNC_ENCODINGS = [
    Encoding.RAW,
    Encoding.RRE,
    Encoding.HEXTILE,
    Encoding.ZRLE,
    Encoding.TIGHT,
]
QEMU_ENCODINGS = [Encoding.RAW, Encoding.HEXTILE, Encoding.ZLIB, Encoding.TIGHT, Encoding.ZRLE]


def office_frame(width: int, height: int) -> np.ndarray:
    """Windows and text only: what a lossless viewer must reproduce exactly."""
    frame = desktop_frame(width, height)
    frame[height * 2 // 3 :, width * 2 // 3 :] = 0x00E0E0E0
    return frame


def used(updates: list) -> set[int]:
    return {e for u in updates for e in u.encodings}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{got.shape} != {want.shape}"
    assert np.array_equal(got, want), diff_summary(got, want)


# -- client role against Xvnc -----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_client_decodes_every_xvnc_encoding(xvnc, tmp_path: Path) -> None:
    server = xvnc(size=(640, 480))
    frame = desktop_frame(640, 480)
    server.paint(frame)
    direct = await threads.deferToThread(
        vncdo_capture, server.host, server.port, tmp_path / "direct.png"
    )
    assert_same(direct, frame)  # vncdotool, independently, sees the painted image
    for encoding in XVNC_ENCODINGS:
        fb, updates = await fetch_framebuffer(tcp(server.host, server.port), [encoding])
        assert encoding in used(updates), f"Xvnc did not use encoding {encoding}"
        assert_same(fb, direct)


@pytest_twisted.ensureDeferred
async def test_client_copyrect_from_xvnc_follows_moved_window(xvnc) -> None:
    server = xvnc(size=(400, 300))
    server.paint(noise_frame(400, 300))
    fb, _ = await fetch_framebuffer(
        tcp(server.host, server.port), [Encoding.COPYRECT, Encoding.RAW], updates=1
    )
    assert_same(fb, server.grab())


@pytest.mark.parametrize(
    "pf",
    [RGB565, BGR233, PixelFormat(32, 24, True, True, 255, 255, 255, 0, 8, 16)],
    ids=["rgb565", "bgr233", "bgr888-be"],
)
@pytest.mark.parametrize(
    "encoding", [Encoding.RAW, Encoding.HEXTILE, Encoding.ZRLE, Encoding.TIGHT]
)
@pytest_twisted.ensureDeferred
async def test_client_pixel_formats_against_xvnc(xvnc, pf: PixelFormat, encoding: int) -> None:
    server = xvnc(size=(320, 240))
    frame = office_frame(320, 240)
    server.paint(frame)
    fb, updates = await fetch_framebuffer(
        tcp(server.host, server.port), [encoding], pixel_format=pf
    )
    assert encoding in used(updates)
    assert_same(fb, PixelCodec(pf).quantize(frame))


@pytest_twisted.ensureDeferred
async def test_client_tight_jpeg_from_xvnc_is_close(xvnc) -> None:
    server = xvnc(size=(640, 480))
    frame = desktop_frame(640, 480)
    server.paint(frame)
    encodings = [Encoding.TIGHT, Encoding.JPEG_QUALITY_0 + 8]
    fb, updates = await fetch_framebuffer(tcp(server.host, server.port), encodings)
    assert Encoding.TIGHT in used(updates)
    error = np.abs(_channels(fb) - _channels(frame))
    assert error.mean() < 3 and np.percentile(error, 99.9) < 64


def _channels(fb: np.ndarray) -> np.ndarray:
    return np.stack([(fb >> s) & 255 for s in (16, 8, 0)]).astype(np.int16)


@pytest_twisted.ensureDeferred
async def test_client_vnc_auth_against_xvnc(xvnc) -> None:
    server = xvnc(size=(320, 240), password="s3cret!")
    frame = office_frame(320, 240)
    server.paint(frame)
    fb, _ = await fetch_framebuffer(
        tcp(server.host, server.port), [Encoding.ZRLE], ClientOptions(password="s3cret!")
    )
    assert_same(fb, frame)
    with pytest.raises(ConnectionError, match=r"[Aa]uthentication"):
        await fetch_framebuffer(
            tcp(server.host, server.port), [Encoding.ZRLE], ClientOptions(password="wrong")
        )


@pytest.mark.parametrize("subtype", ["TLSVnc", "X509Vnc", "X509None", "TLSNone"])
@pytest_twisted.ensureDeferred
async def test_client_vencrypt_against_xvnc(xvnc, tmp_path: Path, subtype: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(str(cert), str(key), "127.0.0.1")
    server = xvnc(
        size=(320, 240),
        password="tls-pass",
        extra_args=["-SecurityTypes", subtype, "-X509Cert", str(cert), "-X509Key", str(key)],
    )
    frame = office_frame(320, 240)
    server.paint(frame)
    wanted = getattr(VeNCryptSubtype, _SUBTYPES[subtype])
    options = ClientOptions(password="tls-pass", ca_file=str(cert), methods=[wanted])
    fb, _ = await fetch_framebuffer(tcp(server.host, server.port), [Encoding.ZRLE], options)
    assert_same(fb, frame)


_SUBTYPES = {
    "TLSVnc": "TLS_VNC",
    "TLSNone": "TLS_NONE",
    "X509Vnc": "X509_VNC",
    "X509None": "X509_NONE",
}


# -- client role against QEMU --------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_client_decodes_every_qemu_encoding(qemu_vm) -> None:
    vm = qemu_vm(linux=True)
    vm.wait_serial("\n", count=1, timeout=90)
    await _wait_prompt(vm)
    screen, blinking = await threads.deferToThread(blink_mask, vm)
    for encoding in QEMU_ENCODINGS:
        fb, updates = await fetch_framebuffer(tcp(vm.host, vm.port), [encoding])
        assert encoding in used(updates), f"QEMU did not use encoding {encoding}"
        assert_same_but_blink(fb, screen, blinking)


@pytest_twisted.ensureDeferred
async def test_client_pixel_format_against_qemu(qemu_vm) -> None:
    vm = qemu_vm(linux=True)
    await _wait_prompt(vm)
    screen, blinking = await threads.deferToThread(blink_mask, vm)
    fb, _ = await fetch_framebuffer(tcp(vm.host, vm.port), [Encoding.ZRLE], pixel_format=RGB565)
    assert_same_but_blink(fb, _qemu_rgb565(screen), blinking)


def _qemu_rgb565(frame: np.ndarray) -> np.ndarray:
    """QEMU converts to 16 bits by truncating each channel (Xvnc rounds)."""
    r, g, b = (frame >> 16) & 255, (frame >> 8) & 255, frame & 255
    words = ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)
    return PixelCodec(RGB565).from_words(words)


async def _wait_prompt(vm) -> None:
    await wait_until(lambda: vm.prompts() >= 1, 120, "the tiny Linux shell prompt", vm.proc)


def blink_mask(
    vm, samples: int = 5, interval: float = 0.25, tries: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """QEMU's screen, and where it changes by itself (the text cursor blinking).

    The guest may still be printing (a late kernel message, the prompt)
    when the first samples are taken: sampling goes on until only a
    cursor-sized area changes, a bounded number of times.
    """
    import time

    spread = (0, 0)
    for _ in range(tries):
        dumps = []
        for _ in range(samples):
            dumps.append(vm.screendump())
            time.sleep(interval)
        mask = np.zeros(dumps[0].shape, dtype=bool)
        for dump in dumps[1:]:
            mask |= dump != dumps[0]
        ys, xs = np.nonzero(mask)
        spread = (int(np.ptp(ys)), int(np.ptp(xs))) if ys.size else (0, 0)
        if spread[0] < 32 and spread[1] < 32:
            return dumps[-1], mask
    raise AssertionError(f"more than a cursor keeps changing by itself: {spread}")


def assert_same_but_blink(got: np.ndarray, screen: np.ndarray, blinking: np.ndarray) -> None:
    """Equal to QEMU's own screen everywhere except the blinking text cursor."""
    assert got.shape == screen.shape
    differ = (got != screen) & ~blinking
    assert not differ.any(), diff_summary(np.where(blinking, screen, got), screen)
    assert len(np.unique(got)) > 1  # the console shows text, not a blank screen


# -- server role: real viewers against a server built on the core --------------------------
def _serve(frame: np.ndarray, options: ServerOptions) -> tuple[object, int]:
    source = Source(frame)
    factory = RFBServerFactory(options, lambda: TerminalSession(lambda s: source))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    return port, port.getHost().port


@pytest.mark.parametrize("password", [None, "p4ss"])
@pytest_twisted.ensureDeferred
async def test_vncdotool_gets_exact_pixels_from_our_server(
    tmp_path: Path, password: str | None
) -> None:
    frame = desktop_frame(640, 480)
    methods = (SecurityType.VNC_AUTH,) if password else (SecurityType.NONE,)
    port, number = _serve(frame, ServerOptions(methods=methods, password=password))
    try:
        shot = await threads.deferToThread(
            vncdo_capture, "127.0.0.1", number, tmp_path / "shot.png", password
        )
        assert_same(shot, frame)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_vncdotool_with_wrong_password_is_refused(tmp_path: Path) -> None:
    port, number = _serve(office_frame(64, 48), ServerOptions((SecurityType.VNC_AUTH,), "right"))
    try:
        with pytest.raises(RuntimeError, match="vncdo"):
            await threads.deferToThread(
                vncdo_capture, "127.0.0.1", number, tmp_path / "shot.png", "wrong"
            )
    finally:
        await port.stopListening()


@pytest.mark.parametrize("password", [None, "p4ss"])
@pytest_twisted.ensureDeferred
async def test_tigervnc_viewer_gets_exact_pixels_from_our_server(
    tmp_path: Path, password: str | None
) -> None:
    frame = office_frame(640, 480)
    methods = (SecurityType.VNC_AUTH,) if password else (SecurityType.NONE,)
    port, number = _serve(frame, ServerOptions(methods=methods, password=password))
    try:
        shown = await threads.deferToThread(
            tigervnc_viewer_capture,
            "127.0.0.1",
            number,
            password,
            lambda img: img.shape == frame.shape and np.array_equal(img, frame),
            60.0,
            tmp_path,
        )
        assert_same(shown, frame)
    finally:
        await port.stopListening()


# Tight without JPEG, chosen by hand (on a fast link the viewer would pick ZRLE,
# whose one zlib stream per connection is never shared).
TIGHT_LOSSLESS = ("-AutoSelect=0", "-PreferredEncoding=Tight", "-NoJPEG")


def typed(frame: np.ndarray, step: int) -> np.ndarray:
    """``frame`` with one more glyph-sized cell of text colours: an update
    small enough for a connection's own zlib stream when it is alone."""
    changed = frame.copy()
    cells = np.random.default_rng(step).choice([0x000000, 0xFFFFFF, 0x204080], size=(16, 8))
    changed[40:56, 24 + 8 * step : 32 + 8 * step] = cells
    return changed


def all_sent_since(sessions: list[TerminalSession], counts: list[int]) -> bool:
    return all(s.updates_sent > n for s, n in zip(sessions, counts, strict=True))


@pytest_twisted.ensureDeferred
async def test_two_tigervnc_viewers_watching_one_picture_share_updates_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real viewers on one source: updates are encoded once, with every
    zlib chunk on a fresh stream, and sent to both as they are.  Both show
    every typed step exactly.

    Each update a step gives is noted with its rectangles: where both viewers
    were sent the same rectangles of the same picture, one encoded them and
    the other was sent those bytes.  A viewer may ask for a refresh of its
    own meanwhile, or send its encodings again, whose reply rides on its
    next update (on a busy machine, during the steps); that update then
    differs for it, and is not one to share.
    """
    current = [-1]  # the step whose update goes out
    updates: dict[tuple[int, tuple[Rect, ...]], list[bool]] = defaultdict(list)
    send_prepared = ServerConnection.send_prepared

    def noted(self: ServerConnection, regions: list[Rect], *args: object) -> object:
        own = self.has_pending_pseudo  # a reply to this viewer's own SetEncodings rides along
        stats = send_prepared(self, regions, *args)  # type: ignore[arg-type]
        if not own:
            updates[current[0], tuple(regions)].append(stats is not None)
        return stats

    monkeypatch.setattr(ServerConnection, "send_prepared", noted)
    frame = office_frame(640, 480)
    source = Source(frame.copy())
    sessions: list[TerminalSession] = []

    def session() -> TerminalSession:
        sessions.append(TerminalSession(lambda s: source))
        return sessions[-1]

    factory = RFBServerFactory(ServerOptions(methods=(SecurityType.NONE,)), session)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    number = port.getHost().port
    final = frame
    for step in range(8):
        final = typed(final, step)
    watching = [
        threads.deferToThread(
            tigervnc_viewer_capture,
            "127.0.0.1",
            number,
            None,
            lambda img: img.shape == final.shape and np.array_equal(img, final),
            60.0,
            tmp_path,
            TIGHT_LOSSLESS,
        )
        for _ in range(2)
    ]
    try:
        await wait_until(lambda: len(source.listeners) == 2, 60, "both viewers watching")
        await wait_until(lambda: all(s.updates_sent for s in sessions), 60, "first updates")
        for number in range(8):
            sent = [s.updates_sent for s in sessions]
            frame = typed(frame, number)
            current[0] = number
            source.set_frame(frame)
            await wait_until(
                lambda sent=sent: all(
                    s.updates_sent > n for s, n in zip(sessions, sent, strict=True)
                ),
                30,
                f"step {number} sent to both viewers",
            )
        assert all(s.proto is not None and s.proto.conn.rect_encoder.shared for s in sessions)
        for shown in [await w for w in watching]:
            assert_same(shown, final)
        # A viewer's own full refresh (TigerVNC asks for one after changing its
        # pixel format or encodings) is long: it goes out slice by slice, its
        # rectangles shared, and the other viewer's may start before the first
        # is whole. The typed steps' updates are small and shared whole.
        whole = (Rect(0, 0, frame.shape[1], frame.shape[0]),)
        both = [
            sends
            for (number, regions), sends in updates.items()
            if number >= 0 and len(sends) > 1 and regions != whole
        ]
        assert all(sends.count(False) == 1 for sends in both), updates  # encoded once
        assert len(both) >= 6, updates  # most steps: one viewer's update went to the other
    finally:
        await port.stopListening()
