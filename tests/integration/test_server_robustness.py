"""Bad peers lose only their own connection; everyone else carries on."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from protocols.rfb.constants import SecurityType
from tests.integration.relayparts import Terminal, sleep, wait_for
from tests.unit.content import desktop_frame, noise_frame
from thinserve import rfbserver
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, ServerOptions


class RawPeer(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def raw_connect(port: int) -> RawPeer:
    factory = protocol.Factory.forProtocol(RawPeer)
    endpoint = protocol.ClientCreator(reactor, RawPeer)
    del factory
    return await endpoint.connectTCP("127.0.0.1", port)


def serve(source: Source) -> tuple[object, int]:
    factory = RFBServerFactory(
        ServerOptions(methods=(SecurityType.NONE,)), lambda: TerminalSession(lambda s: source)
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    return port, port.getHost().port


@pytest_twisted.ensureDeferred
async def test_silent_peer_is_dropped_after_the_handshake_timeout(monkeypatch) -> None:
    monkeypatch.setattr(rfbserver, "HANDSHAKE_TIMEOUT", 0.5)
    port, number = serve(Source(desktop_frame(64, 48)))
    try:
        peer = await raw_connect(number)
        assert peer.received.startswith(b"RFB 003.008\n") or not peer.received
        await defer.gatherResults([peer.lost])  # the server hung up on its own
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
async def test_malformed_message_closes_only_that_terminal(caplog, garbage: bytes) -> None:
    source = Source(desktop_frame(160, 120))
    port, number = serve(source)
    try:
        good = await Terminal().connect(number)
        bad = await Terminal().connect(number)
        with caplog.at_level(logging.WARNING, logger="thinserve.rfbproto"):
            bad.proto.transport.write(garbage)
            await wait_for(lambda: bad.closed, 10, "the bad terminal to be closed")
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
        await wait_for(
            lambda: slow.proto.conn.continuous_updates_supported, 10, "continuous updates"
        )
        await sleep(0.2)
        slow.proto.transport.pauseProducing()  # stops reading: its socket fills up
        for seed in range(12):
            source.set_frame(noise_frame(640, 480, seed=seed))
            await sleep(0.05)
        (session,) = [
            listener for listener in source.listeners if isinstance(listener, TerminalSession)
        ]
        assert session.proto is not None and session.proto.paused  # flow control kicked in
        sent_while_paused = session.updates_sent
        final = desktop_frame(640, 480, seed=99)
        source.set_frame(final)
        slow.proto.transport.resumeProducing()
        await slow.wait_screen(final, timeout=30)
        # It caught up with at most a couple of updates, not the twelve it missed.
        assert session.updates_sent - sent_while_paused <= 3
        assert np.array_equal(slow.framebuffer, final)
        slow.close()
    finally:
        await port.stopListening()
