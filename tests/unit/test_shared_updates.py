"""Whole updates encoded once and sent as they are to every connection that
would send the same.

A connection whose encoders share their streams (``share_streams``) sends
updates whose bytes depend only on the picture, the rectangles and its
settings; the first such update on a picture is kept (``SharedWork``), and
the next connection asking for the same one sends those bytes without
planning or encoding.  Each client must still decode exactly the picture,
also after it leaves sharing and its own zlib streams take over again.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocols.rfb.client import UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor
from protocols.rfb.sharing import SharedWork

from .test_connection import Pair
from .test_shared_work import PROFILES, WHOLE, picture, ready_pair

SHARED = ["tight-jpeg", "tight", "hextile", "raw"]  # every rectangle's finish is shared
OWN_STREAM = ["zrle", "zlib"]  # a stream that cannot restart: never shared


def sharing_pair(profile: str) -> Pair:
    pair = ready_pair(PROFILES[profile])
    pair.server.rect_encoder.share_streams(True)
    pair.server.data_to_send()  # what went before: only the updates are compared
    return pair


def decoded(pair: Pair) -> np.ndarray:
    """The client's picture once it has read everything the server queued."""
    pair.pump()
    assert pair.take_client(UpdateDone)
    return pair.client.framebuffer


def lossless(profile: str) -> bool:
    return profile != "tight-jpeg"


@pytest.mark.parametrize("profile", SHARED)
def test_an_update_encoded_for_one_connection_goes_to_the_next_as_it_is(profile: str) -> None:
    frame = picture()
    work = SharedWork()
    first, second = sharing_pair(profile), sharing_pair(profile)
    first.server.begin_update(frame, WHOLE, work=work).send()
    sent = first.server.data_to_send()
    first.client_events.extend(first.client.receive_data(sent))
    stats = second.server.send_prepared(WHOLE, (), work)
    assert stats is not None and sum(stats.bytes.values()) + 4 == len(sent)
    queued = second.server.data_to_send()
    assert queued == sent
    second.client_events.extend(second.client.receive_data(queued))
    for pair in (first, second):
        assert pair.take_client(UpdateDone)
        if lossless(profile):
            assert np.array_equal(pair.client.framebuffer, frame)


@pytest.mark.parametrize("profile", OWN_STREAM)
def test_updates_through_a_connections_own_stream_are_not_kept(profile: str) -> None:
    work = SharedWork()
    first, second = sharing_pair(profile), sharing_pair(profile)
    first.server.begin_update(picture(), WHOLE, work=work).send()
    assert second.server.send_prepared(WHOLE, (), work) is None


def test_nothing_is_kept_across_a_change_of_picture_or_of_settings() -> None:
    frame = picture()
    work = SharedWork()
    first = sharing_pair("tight-jpeg")
    first.server.begin_update(frame, WHOLE, work=work).send()
    other_rects = sharing_pair("tight-jpeg")
    assert other_rects.server.send_prepared(WHOLE[:2], (), work) is None
    lower = sharing_pair("tight-jpeg")
    lower.server.jpeg_quality = 3
    assert lower.server.send_prepared(WHOLE, (), work) is None
    alone = ready_pair(PROFILES["tight-jpeg"])  # not sharing: its own streams
    assert alone.server.send_prepared(WHOLE, (), work) is None
    work.release()
    assert sharing_pair("tight-jpeg").server.send_prepared(WHOLE, (), work) is None


@pytest.mark.parametrize("profile", ["hextile", "raw"])
def test_a_connection_encoding_for_itself_alone_keeps_nothing(profile: str) -> None:
    """Even where its bytes would do for any connection: nobody else watches."""
    work = SharedWork()
    alone = ready_pair(PROFILES[profile])
    alone.server.begin_update(picture(), WHOLE, work=work).send()
    assert not work._updates and not work._recording
    assert sharing_pair(profile).server.send_prepared(WHOLE, (), work) is None


def test_a_connection_with_its_own_rectangles_queued_encodes_its_update() -> None:
    work = SharedWork()
    frame = picture()
    sharing_pair("tight").server.begin_update(frame, WHOLE, work=work).send()
    with_cursor = sharing_pair("tight")
    with_cursor.client.set_encodings([Encoding.TIGHT, Encoding.CURSOR])
    with_cursor.pump()
    cursor = Cursor(0, 0, np.zeros((2, 2), np.uint32), np.ones((2, 2), bool))
    assert with_cursor.server.set_cursor(cursor)
    assert with_cursor.server.send_prepared(WHOLE, (), work) is None


def small_change(frame: np.ndarray, seed: int) -> tuple[np.ndarray, list[Rect]]:
    """A typed glyph's worth of new pixels: small enough for a connection's own stream."""
    changed = frame.copy()
    rng = np.random.default_rng(seed)
    changed[10:26, 20:30] = rng.choice([0x000000, 0xFFFFFF, 0x3366CC], size=(16, 10))
    return changed, [Rect(20, 10, 10, 16)]


@pytest.mark.parametrize("profile", ["tight", "tight-jpeg"])
def test_streams_stay_in_step_in_and_out_of_sharing(profile: str) -> None:
    """A connection uses its own streams, shares (sending kept updates it never
    encoded), then goes back to its own streams: every picture decodes exactly."""
    frame = picture()
    leader, follower = sharing_pair(profile), ready_pair(PROFILES[profile])
    follower.server.data_to_send()
    for seed in range(3):  # the follower's own streams get a history
        frame, rects = small_change(frame, seed)
        follower.server.send_update(frame, rects)
        assert np.array_equal(decoded(follower)[10:26, 20:30], frame[10:26, 20:30])
    follower.server.rect_encoder.share_streams(True)
    for seed in range(3, 6):
        frame, rects = small_change(frame, seed)
        work = SharedWork()
        leader.server.begin_update(frame, rects, work=work).send()
        assert follower.server.send_prepared(rects, (), work) is not None
        assert np.array_equal(decoded(follower)[10:26, 20:30], frame[10:26, 20:30])
        leader.pump()
    follower.server.rect_encoder.share_streams(False)
    for seed in range(6, 9):
        frame, rects = small_change(frame, seed)
        follower.server.send_update(frame, rects)
        assert np.array_equal(decoded(follower)[10:26, 20:30], frame[10:26, 20:30])


def test_small_rectangles_cost_more_bytes_shared_than_on_the_connections_streams() -> None:
    """What sharing costs: a glyph's zlib chunk on a fresh stream has no history."""
    frame = picture()
    alone, shared = ready_pair(PROFILES["tight"]), sharing_pair("tight")
    alone.server.data_to_send()
    sizes: dict[str, int] = {"alone": 0, "shared": 0}
    for seed in range(8):
        frame, rects = small_change(frame, seed % 2)  # glyphs repeat, as typing does
        for name, pair in (("alone", alone), ("shared", shared)):
            pair.server.send_update(frame, rects)
            sizes[name] += len(pair.server.data_to_send())
    assert sizes["alone"] < sizes["shared"] < 3 * sizes["alone"]
