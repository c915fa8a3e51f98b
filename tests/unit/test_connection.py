"""Server and client connections talking to each other in memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.rfb import messages as m
from protocols.rfb.client import (
    ClientConnection,
    ContinuousUpdatesSupported,
    CursorShape,
    DesktopResized,
    ExtendedKeysSupported,
    ServerInitReceived,
    UpdateDone,
)
from protocols.rfb.constants import ClipboardFlag, Encoding, SecurityType
from protocols.rfb.encodings import RECT_ENCODINGS, Rect
from protocols.rfb.errors import ProtocolError
from protocols.rfb.pixelformat import BGR233, COLOUR_MAP_8, NATIVE, RGB565, PixelCodec, PixelFormat
from protocols.rfb.server import ClipboardIgnored, ClipboardText, Cursor, ServerConnection
from tests.support.pump import End, pump

from .content import desktop_frame

W, H = 320, 200


class Pair:
    """A server and a client joined in memory, pumped until quiet."""

    def __init__(self, frame: np.ndarray | None = None) -> None:
        self.server = ServerConnection([SecurityType.NONE])
        self.client = ClientConnection()
        self.frame = desktop_frame(W, H) if frame is None else frame
        self.server_events: list[object] = []
        self.client_events: list[object] = []
        self.pump()

    def pump(self) -> None:
        client = End(self.client.data_to_send, self._to_client)
        pump(client, End(self.server.data_to_send, self._to_server))

    def _to_server(self, data: bytes) -> None:
        for event in self.server.receive_data(data):
            self.server_events.append(event)
            if isinstance(event, m.ClientInit):
                h, w = self.frame.shape
                self.server.server_init(w, h, "test desktop")

    def _to_client(self, data: bytes) -> None:
        self.client_events.extend(self.client.receive_data(data))

    def take_server(self, kind: type) -> list:
        found = [e for e in self.server_events if isinstance(e, kind)]
        self.server_events = [e for e in self.server_events if not isinstance(e, kind)]
        return found

    def take_client(self, kind: type) -> list:
        found = [e for e in self.client_events if isinstance(e, kind)]
        self.client_events = [e for e in self.client_events if not isinstance(e, kind)]
        return found

    def full_update(self) -> None:
        self.client.request_update(incremental=False)
        self.pump()
        (req,) = self.take_server(m.FramebufferUpdateRequest)
        self.server.send_update(self.frame, [Rect(req.x, req.y, req.width, req.height)])
        self.pump()


def test_server_init_reaches_client() -> None:
    pair = Pair()
    (init,) = pair.take_client(ServerInitReceived)
    assert (init.width, init.height, init.name) == (W, H, "test desktop")
    assert pair.client.framebuffer.shape == (H, W)
    assert pair.take_server(m.ClientInit) == [m.ClientInit(shared=True)]


PIXEL_ENCODINGS = [e for e in RECT_ENCODINGS if e != Encoding.COPYRECT]


@pytest.mark.parametrize("encoding", PIXEL_ENCODINGS)
@pytest.mark.parametrize("pf", [NATIVE, RGB565, BGR233, COLOUR_MAP_8], ids=str)
def test_full_update_every_encoding_and_format(encoding: int, pf: PixelFormat) -> None:
    pair = Pair()
    pair.client.set_pixel_format(pf)
    pair.client.set_encodings([encoding, Encoding.RAW])
    pair.full_update()
    (done,) = pair.take_client(UpdateDone)
    assert set(done.encodings) <= {encoding, Encoding.RAW, Encoding.TIGHT, Encoding.RRE}
    assert encoding in done.encodings
    expected = PixelCodec(pf).quantize(pair.frame)
    np.testing.assert_array_equal(pair.client.framebuffer, expected)


def test_incremental_update_sends_only_changes() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.ZRLE])
    pair.full_update()
    pair.take_client(UpdateDone)
    changed = pair.frame.copy()
    changed[50:60, 100:140] = 0x00FF0000
    pair.client.request_update(incremental=True)
    pair.pump()
    pair.take_server(m.FramebufferUpdateRequest)
    pair.server.send_update(changed, [Rect(100, 50, 40, 10)])
    pair.pump()
    (done,) = pair.take_client(UpdateDone)
    assert done.rects == (Rect(100, 50, 40, 10),)
    np.testing.assert_array_equal(pair.client.framebuffer, changed)


_U16 = st.integers(0, 65535)


@settings(max_examples=300, deadline=None)
@given(st.tuples(_U16, _U16, _U16, _U16), st.booleans())
def test_update_request_comes_out_clipped_to_the_screen(
    area: tuple[int, int, int, int], incremental: bool
) -> None:
    """A request's area as the server reports it: its part inside the screen,
    and a request wholly inside exactly as it was sent."""
    x, y, w, h = area
    pair = Pair()
    pair.take_server(m.FramebufferUpdateRequest)
    events = pair.server.receive_data(m.FramebufferUpdateRequest(incremental, x, y, w, h).pack())
    (req,) = [e for e in events if isinstance(e, m.FramebufferUpdateRequest)]
    left, top = min(x, W), min(y, H)
    right, bottom = min(x + w, W), min(y + h, H)
    assert (req.x, req.y, req.width, req.height) == (left, top, right - left, bottom - top)
    assert req.incremental == incremental


_CLIENT_MESSAGES = st.one_of(
    st.builds(m.FramebufferUpdateRequest, st.booleans(), _U16, _U16, _U16, _U16),
    st.builds(m.KeyEvent, st.booleans(), st.integers(0, 2**32 - 1)),
    st.builds(m.PointerEvent, st.integers(0, 255), _U16, _U16),
    st.builds(m.SetEncodings, st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6).map(tuple)),
    st.builds(m.CutText, st.text(st.characters(max_codepoint=255), max_size=20)),
    st.builds(m.QemuKeyEvent, st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


def _server_reading(chunks: list[bytes]) -> tuple[list[object], bytes]:
    """The events and replies of a server fed ``chunks`` after the handshake."""
    pair = Pair()
    pair.server_events.clear()
    pair.server.data_to_send()
    events: list[object] = []
    for chunk in chunks:
        events += pair.server.receive_data(chunk)
    return events, pair.server.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.lists(_CLIENT_MESSAGES, min_size=1, max_size=8), st.data())
def test_client_messages_read_alike_in_any_chunking(messages: list, data: st.DataObject) -> None:
    """Whole small messages may be read without the stream driver; the
    events and replies are those of the same bytes fed one at a time, and
    the requests, keys and pointer events are the ones sent."""
    stream = b"".join(message.pack() for message in messages)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = [message.pack() for message in messages]
    bytewise = [stream[i : i + 1] for i in range(len(stream))]
    expected = _server_reading(bytewise)
    assert _server_reading(chunks) == expected
    assert _server_reading(whole) == expected
    kinds = (m.KeyEvent, m.PointerEvent, m.QemuKeyEvent)
    sent = [x for x in messages if isinstance(x, kinds)]
    assert [e for e in expected[0] if isinstance(e, kinds)] == sent
    requests = [x for x in messages if isinstance(x, m.FramebufferUpdateRequest)]
    got = [e for e in expected[0] if isinstance(e, m.FramebufferUpdateRequest)]
    assert [(e.incremental, e.x, e.y) for e in got] == [
        (r.incremental, min(r.x, W), min(r.y, H)) for r in requests
    ]


def test_a_message_split_after_its_type_is_not_read_as_another() -> None:
    """A pointer event pressing buttons 1 and 2 has a body that starts like an
    update request (3): split after its type byte, it stays a pointer event."""
    pointer = m.PointerEvent(3, 0x0000, 0x0102).pack()
    request = m.FramebufferUpdateRequest(True, 0, 0, 10, 10).pack()
    events, _ = _server_reading([pointer[:1], pointer[1:] + request])
    assert events == [m.PointerEvent(3, 0, 0x0102), m.FramebufferUpdateRequest(True, 0, 0, 10, 10)]


def test_copyrect_moves_pixels() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.COPYRECT, Encoding.RAW])
    pair.full_update()
    moved = pair.frame.copy()
    moved[100:150, 10:90] = pair.frame[20:70, 30:110]
    pair.client.request_update()
    pair.pump()
    sent = pair.server.send_update(moved, [], copies=[(Rect(10, 100, 80, 50), 30, 20)])
    pair.pump()
    assert sent < 40  # one header and four bytes of source, not 16000 bytes of pixels
    np.testing.assert_array_equal(pair.client.framebuffer, moved)


def test_cursor_shape() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.CURSOR])
    pair.pump()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 1 << 24, size=(13, 11), dtype=np.uint32)
    mask = rng.random((13, 11)) > 0.3
    assert pair.server.set_cursor(Cursor(2, 5, pixels, mask))
    pair.full_update()
    (shape,) = pair.take_client(CursorShape)
    assert (shape.cursor.hotspot_x, shape.cursor.hotspot_y) == (2, 5)
    np.testing.assert_array_equal(shape.cursor.pixels, pixels)
    np.testing.assert_array_equal(shape.cursor.mask, mask)


@pytest.mark.parametrize("pseudo", [Encoding.DESKTOP_SIZE, Encoding.EXTENDED_DESKTOP_SIZE])
def test_server_resize(pseudo: int) -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.HEXTILE, pseudo])
    pair.full_update()
    pair.take_client(DesktopResized)
    bigger = desktop_frame(400, 300)
    assert pair.server.resize(400, 300)
    pair.frame = bigger
    pair.full_update()  # the resize arrives; the request still had the old size
    (resized,) = pair.take_client(DesktopResized)
    assert (resized.width, resized.height) == (400, 300)
    pair.full_update()
    np.testing.assert_array_equal(pair.client.framebuffer, bigger)


def test_set_desktop_size_round_trip() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE])
    pair.full_update()
    pair.client.set_desktop_size(640, 480)
    pair.pump()
    (req,) = pair.take_server(m.SetDesktopSize)
    assert (req.width, req.height) == (640, 480)
    pair.server.resize(640, 480, reason=1)
    pair.frame = desktop_frame(640, 480)
    pair.full_update()
    assert pair.client.framebuffer.shape == (480, 640)
    pair.full_update()
    np.testing.assert_array_equal(pair.client.framebuffer, pair.frame)


def test_keys_pointer_and_extended_keys() -> None:
    pair = Pair()
    pair.client.key_event(True, 0x61, keycode=0x1E)  # no extended keys yet: plain event
    pair.client.set_encodings([Encoding.RAW, Encoding.QEMU_EXTENDED_KEY_EVENT])
    pair.full_update()
    assert pair.take_client(ExtendedKeysSupported)
    pair.client.key_event(False, 0x61, keycode=0x1E)
    pair.client.pointer_event(1, 17, 23)
    pair.pump()
    assert pair.take_server(m.KeyEvent) == [m.KeyEvent(True, 0x61)]
    assert pair.take_server(m.QemuKeyEvent) == [m.QemuKeyEvent(False, 0x61, 0x1E)]
    assert pair.take_server(m.PointerEvent) == [m.PointerEvent(1, 17, 23)]


def test_plain_clipboard_both_ways() -> None:
    pair = Pair()
    pair.client.send_clipboard("caf\xe9 from terminal")
    pair.server.send_clipboard("from desktop")
    pair.pump()
    assert pair.take_server(ClipboardText) == [ClipboardText("caf\xe9 from terminal")]
    assert pair.take_client(ClipboardText) == [ClipboardText("from desktop")]


def test_extended_clipboard_carries_utf8_both_ways() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.EXTENDED_CLIPBOARD])
    pair.pump()
    assert pair.client.clipboard.extended and pair.server.clipboard.extended
    text = "Grüße, 世界 🙂\nline two"
    pair.client.send_clipboard(text)
    pair.server.send_clipboard(text[::-1])
    pair.pump()
    assert pair.take_server(ClipboardText) == [ClipboardText(text)]
    assert pair.take_client(ClipboardText) == [ClipboardText(text[::-1])]


def test_extended_clipboard_notify_then_request_for_large_text() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.EXTENDED_CLIPBOARD])
    pair.pump()
    pair.client.clipboard.peer_text_limit = 10  # the server's limit as if it were small
    pair.client.send_clipboard("x" * 100)
    sent = pair.client.data_to_send()
    notify = m.parse_extended_clipboard(sent[8:], pair.client.limits, from_server=False)
    assert notify.action == ClipboardFlag.NOTIFY
    pair.server_events += pair.server.receive_data(sent)
    pair.pump()
    assert pair.take_server(ClipboardText) == [ClipboardText("x" * 100)]


def test_extended_clipboard_the_server_cannot_act_on_is_reported() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.EXTENDED_CLIPBOARD])
    pair.pump()
    rtf_only = 1 << 1  # a Notify offering RTF and no text (rfbproto: formats bits)
    notify = ClipboardFlag.NOTIFY | rtf_only
    pair.server_events += pair.server.receive_data(
        m.ExtendedClipboard(int(notify), from_server=False).pack()
    )
    (ignored,) = pair.take_server(ClipboardIgnored)
    assert f"0x{int(notify):08x}" in ignored.reason and "text only" in ignored.reason
    assert pair.take_server(ClipboardText) == []
    assert pair.server.data_to_send() == b""  # no request for what it cannot take


def test_continuous_updates_and_fence() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.CONTINUOUS_UPDATES, Encoding.FENCE])
    pair.pump()
    assert pair.take_client(ContinuousUpdatesSupported)
    assert pair.client.fence_supported
    pair.client.enable_continuous_updates(True)
    pair.pump()
    assert pair.server.continuous_updates
    pair.client.send_fence(0, b"ping")
    pair.pump()
    assert pair.take_client(m.Fence) == [m.Fence(0, b"ping", from_server=True)]
    pair.client.enable_continuous_updates(False)
    pair.pump()
    assert not pair.server.continuous_updates
    assert pair.take_client(m.EndOfContinuousUpdates)


def test_bell() -> None:
    pair = Pair()
    pair.server.send_bell()
    pair.pump()
    assert pair.take_client(m.Bell) == [m.Bell()]


def test_colour_map_format_gets_colour_map() -> None:
    pair = Pair()
    pair.client.set_pixel_format(COLOUR_MAP_8)
    pair.pump()
    (entries,) = pair.take_client(m.SetColourMapEntries)
    assert len(entries.colours) == 256


@pytest.mark.parametrize(
    "message, reason",
    [
        (bytes([77]), "unknown client message type"),
        (m.SetEncodings(tuple(range(2000))).pack(), "encodings"),
        (bytes([6, 0, 0, 0]) + (1 << 30).to_bytes(4, "big"), "over the limit"),
        (bytes([0, 0, 0, 0]) + PixelFormat(24, 24).pack(), "bits-per-pixel"),
        (bytes([255, 1]), "QEMU"),
        (m.Fence(0, b"x" * 65).pack(), "fence"),
    ],
)
def test_bad_client_messages_raise_protocol_error(message: bytes, reason: str) -> None:
    pair = Pair()
    with pytest.raises(ProtocolError, match=reason):
        pair.server.receive_data(message)


def _update(*rects: tuple[m.RectHeader, bytes]) -> bytes:
    return m.FramebufferUpdate(list(rects)).pack()


@pytest.mark.parametrize(
    "data, reason",
    [
        (_update((m.RectHeader(300, 0, 100, 10, Encoding.RAW), b"")), "outside"),
        (_update((m.RectHeader(0, 0, 4, 4, Encoding.HEXTILE), b"")), "not asked for"),
        (_update((m.RectHeader(0, 0, 4, 4, Encoding.COPYRECT), b"\x01\x00\x01\x00")), "source"),
        (bytes([9]), "unknown server message type"),
        (bytes([1, 0, 0, 250, 0, 10]), "colour map"),
    ],
)
def test_bad_server_messages_raise_protocol_error(data: bytes, reason: str) -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.COPYRECT])
    with pytest.raises(ProtocolError, match=reason):
        pair.client.receive_data(data)


def test_messages_split_at_every_byte_give_the_same_result() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.ZRLE, Encoding.CURSOR])
    pair.client.request_update(incremental=False)
    pair.pump()
    (_req,) = pair.take_server(m.FramebufferUpdateRequest)
    pair.server.send_update(pair.frame, [Rect(0, 0, W, H)])
    data = pair.server.data_to_send()
    for byte in range(len(data)):
        pair.client_events += pair.client.receive_data(data[byte : byte + 1])
    np.testing.assert_array_equal(pair.client.framebuffer, pair.frame)


def test_rre_noise_goes_out_as_raw_not_bigger() -> None:
    from protocols.rfb.updates import ClientSettings, RectEncoder

    from .content import noise_frame

    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((Encoding.RRE,)))
    noise = noise_frame(64, 64)
    ((header, payload),) = encoder.encode(noise, Rect(0, 0, 64, 64), PixelCodec(NATIVE))
    assert header.encoding == Encoding.RAW and len(payload) == 64 * 64 * 4
    pair = Pair(noise)
    pair.client.set_encodings([Encoding.RRE])
    pair.full_update()
    np.testing.assert_array_equal(pair.client.framebuffer, noise)


def test_tight_with_jpeg_quality_keeps_screen_content_lossless() -> None:
    from protocols.rfb.updates import ClientSettings, RectEncoder

    frame = desktop_frame(256, 256)[:128]  # windows and text, no photo part
    sizes = []
    for encodings in ((Encoding.TIGHT,), (Encoding.TIGHT, Encoding.JPEG_QUALITY_0 + 8)):
        encoder = RectEncoder()
        encoder.configure(ClientSettings.from_encodings(encodings))
        sizes.append(
            sum(len(p) for _, p in encoder.encode(frame, Rect(0, 0, 256, 128), PixelCodec(NATIVE)))
        )
    assert sizes[1] <= sizes[0]


def test_invisible_cursor_is_reported() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.RAW, Encoding.CURSOR])
    pair.pump()
    empty = np.zeros((0, 0), dtype=np.uint32)
    assert pair.server.set_cursor(Cursor(0, 0, empty, empty.astype(bool)))
    pair.full_update()
    (shape,) = pair.take_client(CursorShape)
    assert shape.cursor.pixels.size == 0


def test_large_solid_area_under_zrle_with_tight_listed_is_split_for_tight() -> None:
    from protocols.rfb.updates import ClientSettings, RectEncoder

    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((Encoding.ZRLE, Encoding.TIGHT)))
    solid = np.full((480, 640), 0x00123456, dtype=np.uint32)
    rects = encoder.encode(solid, Rect(0, 0, 640, 480), PixelCodec(NATIVE))
    assert {h.encoding for h, _ in rects} == {Encoding.TIGHT}
    assert all(h.width * h.height <= 65536 for h, _ in rects)
    pair = Pair(solid)
    pair.client.set_encodings([Encoding.ZRLE, Encoding.TIGHT])
    pair.full_update()
    np.testing.assert_array_equal(pair.client.framebuffer, solid)
