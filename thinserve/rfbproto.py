"""What the Twisted RFB protocols of both roles share.

Twisted declares transports as zope interfaces, whose methods mypy reads
as lacking ``self``.  The Protocols here name what the RFB glue calls on
its transport; every transport Twisted hands it provides these methods.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

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


def send_now(transport: object) -> None:
    """Hand what was just written on a plain TCP socket to the kernel now.

    Twisted sends written bytes on the reactor's next turn; an update
    written for each of fifty terminals watching one desktop would all
    wait for the last to be encoded, and a typed character for a turn of
    the loop.  A TCP transport's ``doWrite`` sends what it can at once
    (what does not fit stays for the reactor, as before).  TLS and
    WebSocket transports, and one that is closing, are left to the reactor;
    so is one whose producer is paused: its ``doWrite`` would resume the
    producer (the session) from inside the session's own write.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.producerPaused
        and not getattr(transport, "TLS", False)
    ):
        transport.doWrite()


class RFBProtocolBase(protocol.Protocol, Generic[ConnectionT]):
    """Glue around a sans-I/O connection (``self.conn``) of either role."""

    conn: ConnectionT
    peer_kind = "peer"  # how log lines name the other side
    error: str | None = None
    registered = False  # registered with the transport as its producer
    closing = ""  # why this side closes the connection, once it does

    @property
    def link(self) -> Transport | None:
        """``transport``, as what this glue calls on it."""
        return cast("Transport | None", self.transport)

    def flush(self) -> None:
        """Write everything the connection has queued."""
        link = self.link
        if link is None:
            return
        wrote = False
        while data := self.conn.data_to_send():
            link.write(data)
            wrote = True
        if wrote:
            send_now(self.transport)

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
