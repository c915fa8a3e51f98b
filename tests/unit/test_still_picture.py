"""A source lends its picture to long updates and writes to a copy meanwhile.

A full-screen update goes out over several turns of the reactor while the
desktop keeps changing.  Its picture must stay as it was (else the terminal
shows a torn frame), yet copying the whole screen first would delay its
first rectangle: the source lends the framebuffer itself, and whoever
writes pixels next writes to a copy.
"""

from __future__ import annotations

import gc

import numpy as np

from protocols.rfb import messages as m
from protocols.rfb.client import UpdateDone
from protocols.rfb.encodings import Rect
from thinserve.relay.source import Source

from .content import desktop_frame
from .test_connection import H, Pair, W


def test_a_lent_picture_stays_as_it_was_and_the_source_changes_a_copy() -> None:
    before, after = desktop_frame(W, H, seed=1), desktop_frame(W, H, seed=2)
    source = Source(before.copy())
    still = source.still()
    assert np.shares_memory(still, source.framebuffer)  # nothing copied to lend it
    source.set_frame(after)
    np.testing.assert_array_equal(still, before)
    np.testing.assert_array_equal(source.framebuffer, after)
    assert source.framebuffer is not still


def test_a_picture_no_longer_held_is_written_in_place() -> None:
    source = Source(desktop_frame(W, H, seed=1))
    fb = source.framebuffer
    source.still()  # lent, but let go at once
    gc.collect()
    source.set_frame(desktop_frame(W, H, seed=3))
    assert source.framebuffer is fb


def test_the_client_offers_a_fresh_array_before_writing_an_update() -> None:
    pair = Pair()
    pair.full_update()
    pair.take_client(UpdateDone)
    lent = pair.client.framebuffer
    shown = lent.copy()

    def copy_on_write() -> None:
        pair.client.framebuffer = pair.client.framebuffer.copy()

    pair.client.on_update_start = copy_on_write
    changed = desktop_frame(W, H, seed=4)
    pair.client.request_update(incremental=True)
    pair.pump()
    pair.take_server(m.FramebufferUpdateRequest)
    pair.server.send_update(changed, [Rect(0, 0, W, H)])
    pair.pump()
    assert pair.take_client(UpdateDone)
    np.testing.assert_array_equal(pair.client.framebuffer, changed)
    np.testing.assert_array_equal(lent, shown)  # the lent array was never written
