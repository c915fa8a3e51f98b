"""Random and mutated byte streams into both roles: only ProtocolError comes out."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.rfb import messages as m
from protocols.rfb.client import ClientConnection
from protocols.rfb.constants import Encoding, SecurityType
from protocols.rfb.encodings import RECT_ENCODINGS, Rect
from protocols.rfb.errors import ProtocolError
from protocols.rfb.limits import Limits
from protocols.rfb.pixelformat import NATIVE, RGB565
from protocols.rfb.server import Cursor, ServerConnection

from .content import desktop_frame

SMALL = Limits(
    max_width=512,
    max_height=512,
    max_pixels=256 * 256,
    max_cut_text=4096,
    max_compressed_rect=1 << 20,
    max_name=256,
)
FRAME = desktop_frame(96, 64)
ALL_ENCODINGS = (*RECT_ENCODINGS, *(e for e in Encoding if e < 0))


def _connected() -> tuple[ServerConnection, ClientConnection]:
    server = ServerConnection([SecurityType.NONE], limits=SMALL)
    client = ClientConnection(limits=SMALL)
    for _ in range(20):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if to_server:
            for event in server.receive_data(to_server):
                if isinstance(event, m.ClientInit):
                    server.server_init(96, 64, "fuzz")
        if to_client:
            client.receive_data(to_client)
    assert client.width == 96
    return server, client


def _valid_server_stream() -> bytes:
    """Everything a server can say, once, as one byte stream."""
    server, client = _connected()
    client.set_encodings(ALL_ENCODINGS)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    cursor = Cursor(1, 1, FRAME[:5, :6].copy(), np.ones((5, 6), dtype=bool))
    server.set_cursor(cursor)
    for encoding in RECT_ENCODINGS:
        if encoding == Encoding.COPYRECT:
            server.send_update(FRAME, [], copies=[(Rect(0, 0, 8, 8), 10, 10)])
            continue
        server.settings = server.settings.__class__.from_encodings((encoding,))
        server.rect_encoder.configure(server.settings)
        server.send_update(FRAME, [Rect(3, 2, 40, 30)])
    full = server.settings.__class__.from_encodings(ALL_ENCODINGS)
    server.settings = full
    server.rect_encoder.configure(full)
    server.send_clipboard("clip")
    server.send_bell()
    assert server.resize(64, 48)
    server.send_update(FRAME[:48, :64], [])
    return server.data_to_send()


def _valid_client_stream() -> bytes:
    messages = [
        m.SetPixelFormat(RGB565),
        m.SetEncodings(ALL_ENCODINGS),
        m.FramebufferUpdateRequest(False, 0, 0, 96, 64),
        m.KeyEvent(True, 0x61),
        m.PointerEvent(1, 5, 6),
        m.CutText("hello"),
        m.QemuKeyEvent(True, 0x61, 0x1E),
        m.EnableContinuousUpdates(True, 0, 0, 96, 64),
        m.Fence(4 | (1 << 31), b"abc"),
        m.SetDesktopSize(64, 48, (m.Screen(0, 0, 0, 64, 48),)),
        m.SetPixelFormat(NATIVE),
    ]
    return b"".join(msg.pack() for msg in messages)


VALID_SERVER = _valid_server_stream()
VALID_CLIENT = _valid_client_stream()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "flip" and buf:
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
    return bytes(buf)


def _feed_server(data: bytes, chunk: int) -> None:
    server, _ = _connected()
    try:
        for i in range(0, len(data), chunk):
            server.receive_data(data[i : i + chunk])
            server.data_to_send()
    except ProtocolError:
        pass


def _feed_client(data: bytes, chunk: int) -> None:
    _, client = _connected()
    client.set_encodings(ALL_ENCODINGS)
    client.data_to_send()
    try:
        for i in range(0, len(data), chunk):
            client.receive_data(data[i : i + chunk])
            client.data_to_send()
    except ProtocolError:
        pass
    assert client.framebuffer.size <= SMALL.max_pixels


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400), st.integers(1, 64))
def test_server_role_random_bytes(data: bytes, chunk: int) -> None:
    _feed_server(data, chunk)


@FUZZ
@given(mutated(VALID_CLIENT), st.integers(1, 64))
def test_server_role_mutated_messages(data: bytes, chunk: int) -> None:
    _feed_server(data, chunk)


@FUZZ
@given(st.binary(max_size=400), st.integers(1, 64))
def test_client_role_random_bytes(data: bytes, chunk: int) -> None:
    _feed_client(data, chunk)


@FUZZ
@given(mutated(VALID_SERVER), st.integers(1, 4096))
def test_client_role_mutated_updates(data: bytes, chunk: int) -> None:
    _feed_client(data, chunk)


def test_valid_streams_parse_cleanly() -> None:
    """The unmutated streams are accepted whole (so mutations start from valid)."""
    server, _ = _connected()
    events = server.receive_data(VALID_CLIENT)
    assert len(events) == 10  # the fence is answered by the connection itself
    _, client = _connected()
    client.set_encodings(ALL_ENCODINGS)
    events = client.receive_data(VALID_SERVER)
    assert client.framebuffer.shape == (48, 64)
    assert len(events) > 8
