"""A FramebufferUpdate sent piece by piece (ServerConnection.begin_update)."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.rfb import messages as m
from protocols.rfb.client import UpdateDone
from protocols.rfb.constants import Encoding, FenceFlag
from protocols.rfb.encodings import Rect
from protocols.rfb.encodings.tight import TightEncoder
from protocols.rfb.pixelformat import PixelCodec, PixelFormat
from protocols.rfb.updates import (
    BAND_PIXELS,
    BAND_ROWS,
    FIRST_PIXELS,
    FIRST_WIDTH,
    ClientSettings,
    Part,
    RectEncoder,
    bands,
    split_rect,
)

from .content import desktop_frame
from .test_connection import H, Pair, W

ENCODINGS = [Encoding.TIGHT, Encoding.ZRLE, Encoding.HEXTILE, Encoding.RAW]
BANDS = [Rect(0, y, W, 40) for y in range(0, H, 40)]  # five rectangles


def ready_pair(encoding: int) -> Pair:
    pair = Pair()
    pair.client.set_encodings([encoding, Encoding.COPYRECT])
    pair.full_update()
    pair.take_client(UpdateDone)
    pair.client.request_update(incremental=True)
    pair.pump()
    pair.take_server(m.FramebufferUpdateRequest)
    return pair


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_update_sent_in_pieces_equals_update_sent_whole(encoding: int) -> None:
    whole, pieces = ready_pair(encoding), ready_pair(encoding)
    changed = desktop_frame(W, H, seed=5)
    sent = whole.server.send_update(changed, BANDS)
    expected = whole.server.data_to_send()
    stream = pieces.server.begin_update(changed, BANDS)
    chunks = []
    while stream.send(pixels=W * 40):
        chunks.append(pieces.server.data_to_send())
    chunks.append(pieces.server.data_to_send())
    assert len(chunks) == len(BANDS)
    assert b"".join(chunks) == expected
    assert stream.bytes == sent == len(expected)


def test_client_shows_each_rectangle_as_it_arrives() -> None:
    pair = ready_pair(Encoding.ZRLE)
    changed = desktop_frame(W, H, seed=6)
    stream = pair.server.begin_update(changed, BANDS)
    stream.send(pixels=1)  # at least one rectangle goes
    pair.client_events += pair.client.receive_data(pair.server.data_to_send())
    fb = pair.client.framebuffer
    np.testing.assert_array_equal(fb[:40], changed[:40])
    assert not np.array_equal(fb[40:], changed[40:])
    assert not pair.take_client(UpdateDone)
    stream.send()
    pair.pump()
    (done,) = pair.take_client(UpdateDone)
    assert done.rects == tuple(BANDS)
    np.testing.assert_array_equal(pair.client.framebuffer, changed)


def fence_pair() -> Pair:
    """A ready pair whose client announced fences (the server's own fence taken)."""
    pair = ready_pair(Encoding.RAW)
    pair.client.set_encodings([Encoding.RAW, Encoding.FENCE])
    pair.pump()
    pair.take_client(m.Fence)
    pair.take_server(m.Fence)
    return pair


def test_other_messages_wait_behind_the_update() -> None:
    pair = fence_pair()
    changed = desktop_frame(W, H, seed=7)
    stream = pair.server.begin_update(changed, BANDS)
    stream.send(pixels=1)
    first = pair.server.data_to_send()
    pair.server.send_bell()
    pair.server.send_clipboard("after the update")
    pair.client.send_fence(0, b"ping")  # answered by the server's core at once
    pair.server.receive_data(pair.client.data_to_send())
    assert pair.server.sending_update
    stream.send()
    assert not pair.server.sending_update
    rest = pair.server.data_to_send()
    order = [type(e) for e in pair.client.receive_data(first + rest)]
    assert order[0] is UpdateDone
    assert set(order[1:]) >= {m.Bell, m.Fence}
    np.testing.assert_array_equal(pair.client.framebuffer, changed)


def test_second_update_cannot_start_before_the_first_is_sent() -> None:
    pair = ready_pair(Encoding.RAW)
    stream = pair.server.begin_update(pair.frame, BANDS)
    with pytest.raises(RuntimeError):
        pair.server.begin_update(pair.frame, BANDS)
    stream.send()
    pair.server.begin_update(pair.frame, [Rect(0, 0, 8, 8)]).send()
    pair.pump()
    assert len(pair.take_client(UpdateDone)) == 2


def test_blanked_stream_sends_the_rest_black() -> None:
    pair = ready_pair(Encoding.HEXTILE)
    changed = desktop_frame(W, H, seed=8)
    stream = pair.server.begin_update(changed, BANDS)
    stream.send(pixels=1)
    stream.blank()
    stream.send()
    pair.pump()
    fb = pair.client.framebuffer
    np.testing.assert_array_equal(fb[:40], changed[:40])
    assert not fb[40:].any()


def test_copies_without_copyrect_are_encoded_in_the_stream() -> None:
    pair = Pair()
    pair.client.set_encodings([Encoding.ZRLE])
    pair.full_update()
    moved = pair.frame.copy()
    moved[100:150, 10:90] = pair.frame[20:70, 30:110]
    stream = pair.server.begin_update(moved, [], copies=[(Rect(10, 100, 80, 50), 30, 20)])
    assert not stream.done
    stream.send()
    pair.pump()
    np.testing.assert_array_equal(pair.client.framebuffer, moved)


@pytest.mark.parametrize("width", [1, 100, 1280, 1920, 5000])
def test_large_rectangles_are_planned_as_full_width_bands(width: int) -> None:
    """After the first band, which may start with a narrower piece of its own."""
    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((Encoding.ZRLE,)))
    rect = Rect(3, 5, width, 1000)
    fb = desktop_frame(width + 3, 1005)
    parts = encoder.plan(fb, rect)
    if parts[0].rect.w < width:
        first, rest = parts[0].rect, parts[1].rect
        assert first == Rect(3, 5, FIRST_WIDTH, BAND_ROWS)
        assert rest == Rect(3 + FIRST_WIDTH, 5, width - FIRST_WIDTH, BAND_ROWS)
        parts = [Part(Rect(3, 5, width, BAND_ROWS), parts[0].encoding), *parts[2:]]
    assert all(p.rect.x == 3 and p.rect.w == width for p in parts)
    assert [p.rect.y for p in parts] == sorted(p.rect.y for p in parts)
    assert sum(p.rect.h for p in parts) == 1000
    assert all(p.rect.h % BAND_ROWS == 0 for p in parts[:-1])
    band = encoder.encoder(Encoding.ZRLE).band_pixels or BAND_PIXELS
    assert all(p.rect.area <= max(band, width * BAND_ROWS) for p in parts)
    if width * 1000 > 2 * band:
        assert len(parts) > 1


@pytest.mark.parametrize("size", [(1, 1), (100, 7), (1920, 1080), (5000, 300), (2048, 33)])
@pytest.mark.parametrize("solid", [False, True])
def test_a_tight_plan_tiles_the_rectangle_in_pieces_tight_can_carry(
    size: tuple[int, int], solid: bool
) -> None:
    """Without looking at the pixels: solid or not, every piece is Tight's
    (its fill is the cheapest solid form), within its limits, and the
    pieces cover the rectangle once."""
    width, height = size
    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((Encoding.TIGHT, Encoding.RRE)))
    fb = desktop_frame(width + 4, height + 2)
    if solid:
        fb[:] = 0x336699
    rect = Rect(4, 2, width, height)
    parts = encoder.plan(fb, rect)
    assert {p.encoding for p in parts} == {Encoding.TIGHT}
    assert all(
        p.rect.w <= TightEncoder.max_width and p.rect.area <= TightEncoder.max_area for p in parts
    )
    covered = np.zeros(fb.shape, np.int32)
    for p in parts:
        covered[p.rect.y : p.rect.y + p.rect.h, p.rect.x : p.rect.x + p.rect.w] += 1
    assert np.all(covered[2:, 4:] == 1) and covered.sum() == width * height


def test_client_says_when_it_is_halfway_through_an_update() -> None:
    pair = ready_pair(Encoding.RAW)
    changed = desktop_frame(W, H, seed=9)
    pair.server.send_update(changed, BANDS)
    data = pair.server.data_to_send()
    assert not pair.client.in_update
    pair.client.receive_data(data[: len(data) // 2])
    assert pair.client.in_update
    events = pair.client.receive_data(data[len(data) // 2 :])
    assert not pair.client.in_update
    assert any(isinstance(e, UpdateDone) for e in events)


def test_update_done_lists_the_copies_in_order() -> None:
    pair = ready_pair(Encoding.RAW)
    moved = pair.frame.copy()
    moved[100:150, 10:90] = pair.frame[20:70, 30:110]
    moved[0:10, 0:10] = moved[150:160, 200:210]
    copies = [(Rect(10, 100, 80, 50), 30, 20), (Rect(0, 0, 10, 10), 200, 150)]
    pair.server.send_update(moved, [Rect(300, 0, 20, 20)], copies=copies)
    pair.pump()
    (done,) = pair.take_client(UpdateDone)
    assert done.copies == tuple(copies)
    assert done.encodings == (Encoding.COPYRECT, Encoding.COPYRECT, Encoding.RAW)
    np.testing.assert_array_equal(pair.client.framebuffer, moved)


@pytest.mark.parametrize("encoding", [Encoding.TIGHT, Encoding.ZRLE, Encoding.ZLIB])
def test_asking_for_encodings_again_keeps_the_zlib_streams(encoding: int) -> None:
    """The server's zlib streams go on across SetEncodings; so must the client's."""
    pair = ready_pair(encoding)
    for seed in (10, 11):
        pair.client.set_encodings([encoding, Encoding.RAW, Encoding.COPYRECT])
        pair.client.request_update(incremental=True)
        pair.pump()
        pair.take_server(m.FramebufferUpdateRequest)
        changed = desktop_frame(W, H, seed=seed)
        pair.server.send_update(changed, [Rect(0, 0, W, H)])
        pair.pump()
        np.testing.assert_array_equal(pair.client.framebuffer, changed)


def test_answers_to_the_servers_fences_reach_the_server_as_events() -> None:
    pair = fence_pair()
    pair.server.send_fence(FenceFlag.BLOCK_BEFORE, b"timing")
    pair.pump()
    (answer,) = pair.take_server(m.Fence)
    assert answer.payload == b"timing"
    assert not answer.flags & FenceFlag.REQUEST
    pair.client.send_fence(0, b"the client's own")  # answered by the server's core
    pair.pump()
    assert not pair.take_server(m.Fence)
    assert pair.take_client(m.Fence) == [m.Fence(0, b"the client's own", from_server=True)]


@pytest.mark.parametrize(
    ("rect", "encoding"),
    [
        (Rect(0, 0, 16, 16), Encoding.HEXTILE),
        (Rect(0, 0, 128, 16), Encoding.HEXTILE),
        (Rect(0, 0, 129, 16), Encoding.ZRLE),
        (Rect(0, 0, 320, 6), Encoding.ZRLE),
        (Rect(0, 0, 1, 200), Encoding.ZRLE),
    ],
)
def test_solid_rectangles_of_many_hextile_tiles_go_as_zrle(rect: Rect, encoding: int) -> None:
    """Hextile pays a byte per 16x16 tile; ZRLE's solid tiles compress to a few bytes."""
    encoder = RectEncoder()
    encoder.configure(
        ClientSettings.from_encodings((Encoding.ZRLE, Encoding.HEXTILE, Encoding.RAW))
    )
    fb = np.full((H, W), 0x336699, dtype=np.uint32)
    assert encoder.plan(fb, rect) == [Part(rect, encoding)]


def test_solid_rectangles_stay_hextile_without_zrle() -> None:
    encoder = RectEncoder()
    encoder.configure(ClientSettings.from_encodings((Encoding.HEXTILE, Encoding.RAW)))
    fb = np.full((H, W), 0x336699, dtype=np.uint32)
    rect = Rect(0, 0, W, H)
    assert {part.encoding for part in encoder.plan(fb, rect)} == {Encoding.HEXTILE}


def covers_once(pieces: list[Rect], rect: Rect) -> bool:
    covered = np.zeros((rect.y + rect.h, rect.x + rect.w), dtype=np.int32)
    for p in pieces:
        covered[p.y : p.y + p.h, p.x : p.x + p.w] += 1
    return bool((covered[rect.y :, rect.x :] == 1).all()) and int(covered.sum()) == rect.area


def test_the_first_band_of_a_large_rectangle_is_the_narrowest() -> None:
    rect = Rect(0, 0, 1920, 1080)
    pieces = list(bands(rect, 1 << 18))
    # Its first tiles leave first, soonest, then the rest of its 64 rows.
    assert pieces[:2] == [
        Rect(0, 0, FIRST_WIDTH, BAND_ROWS),
        Rect(FIRST_WIDTH, 0, 1920 - FIRST_WIDTH, BAND_ROWS),
    ]
    assert {p.h for p in pieces[2:-1]} == {2 * BAND_ROWS} and covers_once(pieces, rect)
    assert list(bands(Rect(0, 0, 1920, 100), 1 << 18)) == [Rect(0, 0, 1920, 100)]  # one band: whole
    narrow = Rect(8, 8, 2 * FIRST_WIDTH, 1080)  # too narrow to split the first band
    assert next(iter(bands(narrow, 1 << 18))) == Rect(8, 8, 2 * FIRST_WIDTH, BAND_ROWS)


def test_a_large_rectangle_split_for_a_size_limit_starts_with_a_small_piece() -> None:
    rect = Rect(10, 20, 1920, 1080)
    pieces = list(split_rect(rect, 2048, 65536))
    assert pieces[0].area <= FIRST_PIXELS < pieces[1].area <= 65536
    assert all(p.w <= 2048 and p.area <= 65536 for p in pieces) and covers_once(pieces, rect)
    small = Rect(0, 0, 1920, 30)  # one row of pieces: as it was
    assert list(split_rect(small, 2048, 65536)) == [small]
    wide = Rect(0, 0, 3000, 200)
    pieces = list(split_rect(wide, 2048, 65536))
    assert all(p.w <= 2048 and p.area <= 65536 for p in pieces) and covers_once(pieces, wide)


def test_pieces_of_a_size_limit_come_in_whole_jpeg_blocks_of_rows() -> None:
    """At 1920 wide, 65536 pixels allow 34 rows, which JPEG would code as 48:
    the pieces after the first take 32, all but the last."""
    rect = Rect(0, 0, 1920, 1080)
    pieces = list(split_rect(rect, 2048, 65536))
    assert {p.h for p in pieces[1:-1]} == {32} and pieces[-1].h <= 32
    assert covers_once(pieces, rect)
    for width in (1000, 1280, 1500, 2048):  # 65, 51, 43 and 32 rows allowed
        pieces = list(split_rect(Rect(0, 0, width, 700), 2048, 65536))
        assert all(p.h % 16 == 0 for p in pieces[1:-1]), width


def test_a_fast_links_choice_reaches_every_encoder_and_the_sharing_key() -> None:
    """Updates encoded for a fast link are shared only with fast links, and an
    encoder made after the choice follows it too."""
    settings = ClientSettings.from_encodings((Encoding.TIGHT, Encoding.ZRLE))
    codec = PixelCodec(PixelFormat())
    frame = desktop_frame(512, 64, seed=7)
    rect = Rect(0, 0, 512, 64)
    fast, slow, alone = RectEncoder(), RectEncoder(), TightEncoder()
    for encoder in (fast, slow):
        encoder.configure(settings)
    assert fast.update_key() == slow.update_key()
    fast.prefer_speed(True)  # before the Tight encoder is made
    assert fast.update_key() != slow.update_key()
    alone.prefer_speed(True)
    parts = fast.plan(frame, rect)
    assert {part.encoding for part in parts} == {Encoding.TIGHT}
    expected = [
        alone.encode(frame[p.rect.y : p.rect.y + p.rect.h, p.rect.x : p.rect.x + p.rect.w], codec)
        for p in parts
    ]
    sent_fast = [payload for _, payload in fast.encode(frame, rect, codec)]
    assert sent_fast == expected
    assert sent_fast != [payload for _, payload in slow.encode(frame, rect, codec)]
