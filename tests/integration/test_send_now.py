"""Updates leave at once: written bytes reach the kernel before the reactor turns.

Twisted sends what a protocol writes on the reactor's next turn.  thinserve
hands an update to the kernel as soon as it is written (``write_now``), so
a terminal's update does not wait for the other terminals' updates encoded
in the same turn, nor a typed character for a turn of the loop.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from tests.support.waiting import wait_until
from thinserve.rfbproto import send_now, write_now

pytestmark = pytest.mark.integration


class Kept(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[Any, socket.socket]]:
    """thinserve's side of a loopback TCP connection (a Twisted transport)
    and the peer's plain blocking socket, read without the reactor."""
    factory = protocol.Factory.forProtocol(Kept)
    factory.made = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    peer.settimeout(None)  # plain blocking: MSG_DONTWAIT then answers at once
    try:
        server: Kept = await factory.made  # type: ignore[attr-defined]
        yield server.transport, peer
    finally:
        peer.close()
        await port.stopListening()


def kernel_has(sock: socket.socket, size: int) -> bytes:
    """What the peer's socket holds now, without waiting and without the reactor."""
    try:
        return sock.recv(size, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return b""


def _closed(sock: socket.socket) -> bool:
    """The peer closed: a read answers at once with nothing."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False


@pytest_twisted.ensureDeferred
async def test_written_bytes_reach_the_peer_before_the_reactor_turns() -> None:
    async with connected() as (transport, peer):
        transport.write(b"left for the reactor")
        assert kernel_has(peer, 100) == b""  # Twisted holds it until its next turn
        write_now(transport, b", sent now")  # behind the bytes already waiting
        assert kernel_has(peer, 100) == b"left for the reactor, sent now"
        peer.recv(100)  # there: does not block
        transport.loseConnection()
        send_now(transport)  # closing: left to the reactor, which ends the connection
        await wait_until(lambda: _closed(peer), 10, "the close")


@pytest_twisted.ensureDeferred
async def test_a_socket_with_nothing_waiting_is_written_without_the_reactor() -> None:
    """The bytes go straight to the socket: the transport never registers
    with the reactor as a writer for them."""
    async with connected() as (transport, peer):
        registered: list[bool] = []
        start_writing = transport.startWriting

        def noted() -> None:
            registered.append(True)
            start_writing()

        transport.startWriting = noted
        write_now(transport, b"straight out")
        assert kernel_has(peer, 100) == b"straight out"
        assert not registered and transport.dataBuffer == b"" and not transport._tempDataBuffer
        transport.write(b"!")  # the usual way does register
        assert registered


@pytest.mark.parametrize("size", [1 << 22])
@pytest_twisted.ensureDeferred
async def test_what_a_socket_with_nothing_waiting_does_not_take_follows_in_order(
    size: int,
) -> None:
    async with connected() as (transport, peer):
        data = bytes(range(256)) * (size // 256)
        write_now(transport, data)
        write_now(transport, b"after")  # waits behind the rest: never overtakes it
        got = bytearray()

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.extend(peer.recv(1 << 20, socket.MSG_DONTWAIT))
            return len(got) == size + 5

        await wait_until(read, 20, "every byte")
        assert bytes(got) == data + b"after"


def test_other_transports_are_left_alone() -> None:
    send_now(None)
    send_now(object())


@pytest.mark.parametrize("size", [1 << 22])
@pytest_twisted.ensureDeferred
async def test_what_does_not_fit_stays_for_the_reactor(size: int) -> None:
    async with connected() as (transport, peer):
        data = bytes(range(256)) * (size // 256)
        transport.write(data)
        send_now(transport)  # more than the socket takes at once
        got = bytearray()

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.extend(peer.recv(1 << 20, socket.MSG_DONTWAIT))
            return len(got) == size

        await wait_until(read, 20, "every byte")
        assert bytes(got) == data


@pytest_twisted.ensureDeferred
async def test_a_paused_producer_is_left_to_the_reactor() -> None:
    """Sending now would resume a paused producer (a terminal's session) from
    inside its own write: that waits for the reactor, as before."""
    resumed: list[bool] = []

    class Producer:
        def resumeProducing(self) -> None:
            resumed.append(True)

        def pauseProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    async with connected() as (transport, peer):
        transport.registerProducer(Producer(), True)
        transport.producerPaused = True  # as its full buffer does
        transport.write(b"waits")
        send_now(transport)
        assert kernel_has(peer, 100) == b"" and not resumed
        await wait_until(lambda: kernel_has(peer, 100) == b"waits", 10, "the reactor's write")
        assert resumed  # by the reactor, on its own turn
