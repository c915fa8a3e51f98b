"""What the Twisted RFB protocols of both roles share.

Twisted declares transports as zope interfaces, whose methods mypy reads
as lacking ``self``.  The Protocols here name what the RFB glue calls on
its transport; every transport Twisted hands it provides these methods.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Generic, Protocol, TypeGuard, TypeVar, cast

from twisted.internet import protocol, tcp
from twisted.internet.interfaces import IAddress

from protocols.rfb.client import ClientConnection
from protocols.rfb.server import ServerConnection

if TYPE_CHECKING:
    from OpenSSL import crypto

    from .tls import TLSContext

log = logging.getLogger(__name__)

ConnectionT = TypeVar("ConnectionT", ClientConnection, ServerConnection)


class Transport(Protocol):
    """An RFB connection's transport (ITransport, IConsumer): a TCP or Unix
    socket, TLS over one, or a browser terminal's WebSocket."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def unregisterProducer(self) -> None: ...


class TLSTransport(Transport, Protocol):
    """A socket transport, which can start TLS (ITLSTransport, ISSLTransport)."""

    def startTLS(self, contextFactory: TLSContext, normal: bool = True) -> None: ...
    def getPeerCertificate(self) -> crypto.X509 | None: ...
    def abortConnection(self) -> None: ...


def write_now(transport: Transport, data: bytes) -> None:
    """Write ``data`` and hand it to the kernel now, where that is safe.

    Twisted sends written bytes on the reactor's next turn; an update
    written for each of fifty terminals watching one desktop would all
    wait for the last to be encoded, and a typed character for a turn of
    the loop.  On a plain TCP socket with nothing waiting, the bytes go
    straight to ``send``: no buffering, and no registering with the reactor
    and unregistering again (two system calls) for a write the socket
    takes whole.  What it does not take, and everything on a socket that
    already has bytes waiting, goes through the transport as usual.
    """
    if _plain_tcp(transport) and _nothing_waiting(transport):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):  # lost: the transport finds out and ends it
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
    send_now(transport)


def send_now(transport: object) -> None:
    """Hand what is written on a plain TCP socket to the kernel now.

    A TCP transport's ``doWrite`` sends what it can at once (what does not
    fit stays for the reactor, as before).  TLS and WebSocket transports,
    and one that is closing, are left to the reactor; so is one whose
    producer is paused: its ``doWrite`` would resume the producer (the
    session) from inside the session's own write.
    """
    if _plain_tcp(transport):
        transport.doWrite()


def _plain_tcp(transport: object) -> TypeGuard[tcp.Connection]:
    """An open TCP transport without TLS whose producer is not paused."""
    return (
        isinstance(transport, tcp.Connection)
        and bool(transport.connected)
        and not transport.disconnecting
        and not transport.producerPaused
        and not getattr(transport, "TLS", False)
    )


def _nothing_waiting(transport: tcp.Connection) -> bool:
    """No bytes of the transport's own wait to be sent (both its buffers empty)."""
    return len(transport.dataBuffer) == transport.offset and transport._tempDataLen == 0


class RFBProtocolBase(protocol.Protocol, Generic[ConnectionT]):
    """Glue around a sans-I/O connection (``self.conn``) of either role."""

    conn: ConnectionT
    peer_kind = "peer"  # how log lines name the other side
    error: str | None = None
    registered = False  # registered with the transport as its producer
    closing = ""  # why this side closes the connection, once it does
    written = 0  # bytes flushed to the transport so far

    @property
    def link(self) -> Transport | None:
        """``transport``, as what this glue calls on it."""
        return cast("Transport | None", self.transport)

    def flush(self) -> None:
        """Write everything the connection has queued."""
        # ``self.link`` without its call: flush runs for every update and request.
        link: Transport | None = self.transport
        if link is None:
            return
        out = []
        while data := self.conn.data_to_send():
            out.append(data)
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.written += len(data)
            write_now(link, data)

    def write_before_tls(self) -> None:
        """Write the last bytes that go out in clear, and only those."""
        clear = self.conn.data_to_send()
        if clear and self.link is not None:
            self.link.write(clear)

    def fail(self, reason: str) -> None:
        """Close this one connection because of a protocol error, with a log line."""
        log.warning("%s %s: %s; closing", self.peer_kind, self.peer(), reason)
        self.error = reason
        self.flush()  # a handshake failure carries its reason to the peer
        self.close(reason)

    def close(self, why: str = "closed by thinserve") -> None:
        """Close after what is queued, for the reason ``why`` (logged at the end).
        A registered producer is unregistered first: TLS waits for that."""
        self.closing = self.closing or why
        link = self.link
        if link is None:
            return
        if self.registered:
            self.registered = False
            link.unregisterProducer()
        link.loseConnection()

    def peer(self) -> str:
        link = self.link
        if link is None:
            return "?"
        try:
            return str(link.getPeer())
        except Exception:
            return "?"
