"""RFB over WebSocket (RFC 6455) for Twisted, on autobahn.

Each binary WebSocket message carries a piece of the RFB byte stream, in
both directions; message boundaries mean nothing to RFB.  The wrapped
factory is thinserve's ordinary RFB server factory, so a browser terminal
gets exactly what a TCP terminal gets.

The handshake is refused unless the page that opened the socket came from
an allowed origin: by default only the origin of the page itself (the
scheme of this listener plus the Host header of the request).  Incoming
frames and messages are bounded, so a browser cannot make the server
buffer without limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WrappingWebSocketServerFactory,
    WrappingWebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import interfaces, protocol
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.server import Request

log = logging.getLogger(__name__)

SUBPROTOCOL = "binary"  # what websockify-style clients ask for; noVNC may ask for none


@dataclass(frozen=True)
class WebSocketOptions:
    """How the WebSocket endpoint guards itself.

    ``same_origin``: accept pages served by this very listener (Origin equal to
    scheme://Host).  ``allowed_origins``: further exact origins to accept, such
    as "https://terminal.example.org".  ``max_message_size`` bounds both one
    frame and one reassembled message from the browser (noVNC sends at most
    10 KiB per message).
    """

    same_origin: bool = True
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = 64 * 1024
    open_handshake_timeout: float = 10.0


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(
    origin: str | None, host: str | None, secure: bool, opts: WebSocketOptions
) -> bool:
    """True when a browser page from ``origin`` may open this socket."""
    if not origin or normalize_origin(origin) == "null":
        return False
    origin = normalize_origin(origin)
    if origin in {normalize_origin(o) for o in opts.allowed_origins}:
        return True
    if not opts.same_origin or not host:
        return False
    scheme = "https" if secure else "http"
    return origin == f"{scheme}://{host.strip().lower()}"


class RFBWebSocketProtocol(WrappingWebSocketServerProtocol):
    """One browser terminal: checks the handshake, then relays binary messages.

    The RFB protocol (and so the terminal's session) is built only once the
    handshake has been accepted; a refused browser never reaches the relay.
    """

    factory: RFBWebSocketFactory
    _proto: protocol.Protocol | None = None

    def __init__(self, addr: object) -> None:
        super().__init__()
        self.addr = addr

    def onConnect(self, request: ConnectionRequest) -> str | None:
        secure = interfaces.ISSLTransport.providedBy(self.transport)
        host = request.headers.get("host")
        if not origin_allowed(request.origin, host, secure, self.factory.options):
            log.warning("browser terminal %s: origin %r refused", request.peer, request.origin)
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        self._binaryMode = True
        if not request.protocols:
            return None
        if SUBPROTOCOL in request.protocols:
            return SUBPROTOCOL
        raise ConnectionDeny(
            ConnectionDeny.NOT_ACCEPTABLE, f"only the {SUBPROTOCOL!r} subprotocol is spoken"
        )

    def onOpen(self) -> None:
        proto = self.factory.rfb_factory.buildProtocol(self.addr)
        if proto is None:
            self.sendClose(1000, "no terminal available")
            return
        self._proto = proto
        proto.makeConnection(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._proto is None:
            return
        if not isBinary:
            self._fail_connection(
                self.CLOSE_STATUS_CODE_UNSUPPORTED_DATA, "RFB travels in binary messages"
            )
            return
        self._proto.dataReceived(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.connectionLost(Failure(ConnectionDone(reason or "WebSocket closed")))

    def write(self, data: bytes) -> None:
        """Send RFB bytes as binary messages no larger than the message bound."""
        step = self.factory.options.max_message_size
        view = memoryview(data)
        for start in range(0, len(view), step):
            self.sendMessage(bytes(view[start : start + step]), isBinary=True)


class RFBWebSocketFactory(WrappingWebSocketServerFactory):
    """Wraps an RFB server factory (thinserve.rfbserver.RFBServerFactory)."""

    protocol = RFBWebSocketProtocol

    def __init__(
        self, rfb_factory: protocol.Factory, options: WebSocketOptions | None = None
    ) -> None:
        # RFB updates are already compressed by their encodings; permessage-deflate
        # would only spend CPU (and is one more decompressor to bound).
        super().__init__(rfb_factory, url=None, enableCompression=False)
        self.rfb_factory = rfb_factory
        self.options = options or WebSocketOptions()
        self._subprotocols = [SUBPROTOCOL]
        self.protocols = [SUBPROTOCOL]
        size = self.options.max_message_size
        self.setProtocolOptions(
            maxFramePayloadSize=size,
            maxMessagePayloadSize=size,
            openHandshakeTimeout=self.options.open_handshake_timeout,
            webStatus=False,
            allowNullOrigin=True,  # "null" goes to onConnect's check like any other origin
        )

    def buildProtocol(self, addr: object) -> RFBWebSocketProtocol:
        proto = RFBWebSocketProtocol(addr)
        proto.factory = self
        return proto


class RFBWebSocketResource(WebSocketResource):
    """The WebSocket endpoint inside a twisted.web site.

    The HTTP channel registered itself as the connection's producer; it hands
    the connection over, so the RFB protocol can register itself instead and
    get flow control from the socket.
    """

    def render(self, request: Request) -> object:
        transport = request.channel.transport
        if transport is not None:
            transport.unregisterProducer()
        return super().render(request)


def rfb_websocket_resource(
    rfb_factory: protocol.Factory, options: WebSocketOptions | None = None
) -> RFBWebSocketResource:
    """A twisted.web resource speaking RFB over WebSocket with ``rfb_factory``."""
    return RFBWebSocketResource(RFBWebSocketFactory(rfb_factory, options))
