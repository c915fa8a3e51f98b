"""Bad peers lose only their own connection; everyone else carries on."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import pytest_twisted

from protocols.rfb.constants import SecurityType
from tests.support.backpressure import stalled
from tests.support.rawpeer import connect_raw
from tests.support.reactor import ListeningPort, running_reactor, transport_of
from tests.support.terminal import Terminal
from tests.support.waiting import wait_until
from tests.unit.content import desktop_frame, noise_frame
from thinserve import rfbserver
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions


def serve(source: Source) -> tuple[ListeningPort, int]:
    factory = RFBServerFactory(
        ServerOptions(methods=(SecurityType.NONE,)), lambda: TerminalSession(lambda s: source)
    )
    port = running_reactor().listenTCP(0, factory, interface="127.0.0.1")
    return port, port.getHost().port


@pytest_twisted.ensureDeferred
async def test_silent_peer_is_dropped_after_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rfbserver, "HANDSHAKE_TIMEOUT", 0.5)
    port, number = serve(Source(desktop_frame(64, 48)))
    try:
        peer = await connect_raw(number)
        assert peer.received.startswith(b"RFB 003.008\n") or not peer.received
        await peer.wait_closed(timeout=10)  # the server hung up on its own
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x63",  # unknown message type
        b"\x02\x00\xff\xff",  # SetEncodings with 65535 entries
        b"\x06\x00\x00\x00\x7f\xff\xff\xff",  # 2 GiB of cut text
        b"\x00\x00\x00\x00" + bytes(16),  # a pixel format of 0 bits per pixel
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_message_closes_only_that_terminal(
    caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    source = Source(desktop_frame(160, 120))
    port, number = serve(source)
    try:
        good = await Terminal().connect(number)
        bad = await Terminal().connect(number)
        with caplog.at_level(logging.WARNING, logger="thinserve.rfbproto"):
            assert bad.proto is not None
            transport_of(bad.proto).write(garbage)
            await wait_until(lambda: bad.closed, 10, "the bad terminal to be closed")
        assert any("closing" in r.getMessage() for r in caplog.records)
        changed = noise_frame(160, 120)
        source.set_frame(changed)
        await good.wait_screen(changed)
        assert not good.closed
        good.close()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_terminal_gets_the_newest_picture_not_a_backlog() -> None:
    source = Source(desktop_frame(640, 480))
    port, number = serve(source)
    try:
        slow = await Terminal(continuous=True).connect(number)
        (session,) = [
            listener for listener in source.listeners if isinstance(listener, TerminalSession)
        ]
        proto = session.proto
        assert proto is not None
        await wait_until(lambda: proto.conn.continuous_updates, 10, "continuous updates")
        assert slow.proto is not None
        reading = transport_of(slow.proto)
        reading.pauseProducing()  # stops reading: its socket fills up
        seeds = iter(range(1000))

        def stalled_after_another_picture() -> bool:
            if stalled(proto.paused, proto.transport):
                return True
            source.set_frame(noise_frame(640, 480, seed=next(seeds)))
            return False

        await wait_until(
            stalled_after_another_picture, 30, "flow control to pause the session for good"
        )
        sent_while_paused = session.updates_sent
        final = desktop_frame(640, 480, seed=99)
        source.set_frame(final)
        reading.resumeProducing()
        await slow.wait_screen(final, timeout=30)
        # It caught up with at most a couple of updates, not the twelve it missed.
        assert session.updates_sent - sent_while_paused <= 3
        assert np.array_equal(slow.framebuffer, final)
        slow.close()
    finally:
        await port.stopListening()
