"""RFB over WebSocket (RFC 6455) for Twisted, on autobahn.

Each binary WebSocket message carries a piece of the RFB byte stream, in
both directions; message boundaries mean nothing to RFB.  The wrapped
factory is thinserve's ordinary RFB server factory, so a browser terminal
gets exactly what a TCP terminal gets.

The handshake is refused unless the page that opened the socket came from
an allowed origin: by default only the origin of the page itself (the
scheme of this listener plus the Host header of the request).  Incoming
frames and messages are bounded, so a browser cannot make the server
buffer without limit; a peer that breaks a bound is sent a close frame
with the reason and dropped at most ``close_handshake_timeout`` later,
and a peer that stays silent is pinged and dropped when it does not
answer (the values are in ``thinserve/web/limits.py``).

A page that asks for the ``thinserve-key.v1`` subprotocol proves a key
before RFB starts: the server sends a 32-byte nonce, the page answers with
one binary message (u16 big-endian length of its public key, the key as
SubjectPublicKeyInfo DER, a 64-byte ECDSA P-256 signature of
``protocols.identity.proof_message(nonce)``).  The RFB protocol is then
built with ``proven_key`` set to the key's fingerprint; a missing, late,
malformed or wrong proof closes the socket with 1008 and no RFB byte.
"""

from __future__ import annotations

import logging
import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WrappingWebSocketServerFactory,
    WrappingWebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import interfaces
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from protocols.identity import MAX_SPKI_BYTES, NONCE_BYTES, KeyProofError, verify_key_proof

from ..clock import Timer
from ..rfbserver import RFBServerProtocol
from .limits import (
    CLOSE_HANDSHAKE_TIMEOUT,
    KEY_PROOF_TIMEOUT,
    MAX_WS_MESSAGE,
    OPEN_HANDSHAKE_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    WS_SEND_PIECE,
    RefusalLog,
)

log = logging.getLogger(__name__)

SUBPROTOCOL = "binary"  # what websockify-style clients ask for; noVNC may ask for none
KEY_SUBPROTOCOL = "thinserve-key.v1"  # binary RFB, after a key proof
SIGNATURE_BYTES = 64  # ECDSA P-256: r and s, 32 bytes each
MAX_PROOF_BYTES = 2 + MAX_SPKI_BYTES + SIGNATURE_BYTES
CLOSE_POLICY = 1008  # RFC 6455 "policy violation": the key proof failed

if TYPE_CHECKING:
    # The autobahn and Twisted signatures used here that their code leaves unannotated.

    class _ConnectionDeny(ConnectionDeny):
        def __init__(self, code: int, reason: str | None = None) -> None: ...

    class _Failure(Failure):
        def __init__(self, exc_value: BaseException) -> None: ...

    class _WebSocketProtocol(WrappingWebSocketServerProtocol):
        def makeConnection(self, transport: object) -> None: ...
        def sendMessage(
            self,
            payload: bytes,
            isBinary: bool = False,
            fragmentSize: int | None = None,
            sync: bool = False,
            doNotCompress: bool = False,
        ) -> None: ...

    class _WebSocketFactory(WrappingWebSocketServerFactory):
        def __init__(
            self, factory: RFBFactory, url: str | None, enableCompression: bool = True
        ) -> None: ...
        def setProtocolOptions(self, *args: object, **options: object) -> None: ...

    class _WebSocketResource(WebSocketResource):
        def __init__(self, factory: RFBWebSocketFactory) -> None: ...
        def render(self, request: Request) -> bytes | int: ...

else:
    _ConnectionDeny, _Failure = ConnectionDeny, Failure
    _WebSocketProtocol, _WebSocketFactory = (
        WrappingWebSocketServerProtocol,
        WrappingWebSocketServerFactory,
    )
    _WebSocketResource = WebSocketResource


class RFBStream(Protocol):
    """The RFB protocol a browser terminal's messages feed (IProtocol)."""

    def makeConnection(self, transport: object) -> None: ...
    def dataReceived(self, data: bytes) -> None: ...
    def connectionLost(self, reason: Failure) -> None: ...


class RFBFactory(Protocol):
    """thinserve's RFB server factory, as the WebSocket endpoint uses it."""

    def buildProtocol(self, addr: object) -> RFBStream | None: ...


class _Socket(Protocol):
    """The transport of the HTTP connection the WebSocket takes over."""

    protocol: object

    def getPeer(self) -> IAddress: ...
    def unregisterProducer(self) -> None: ...


@dataclass(frozen=True)
class WebSocketOptions:
    """How the WebSocket endpoint guards itself.

    ``same_origin``: accept pages served by this very listener (Origin equal to
    scheme://Host).  ``allowed_origins``: further exact origins to accept, such
    as "https://terminal.example.org".  ``max_message_size`` bounds both one
    frame and one reassembled message from the browser (and the size of the
    messages sent to it).  Timeouts are in seconds; ``ping_interval`` 0 turns
    pings off.  The defaults, and why, are in ``thinserve/web/limits.py``.
    """

    same_origin: bool = True
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = MAX_WS_MESSAGE
    open_handshake_timeout: float = OPEN_HANDSHAKE_TIMEOUT
    close_handshake_timeout: float = CLOSE_HANDSHAKE_TIMEOUT
    key_proof_timeout: float = KEY_PROOF_TIMEOUT  # from the nonce sent to the proof received
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT


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


def split_key_proof(payload: bytes) -> tuple[bytes, bytes]:
    """(public key as SPKI DER, signature) of a key proof message."""
    if len(payload) < 2:
        raise KeyProofError("the key proof is shorter than its length field")
    (length,) = struct.unpack_from("!H", payload)
    if len(payload) != 2 + length + SIGNATURE_BYTES:
        raise KeyProofError(
            f"the key proof is {len(payload)} bytes, not 2 + {length} + {SIGNATURE_BYTES}"
        )
    return payload[2 : 2 + length], payload[2 + length :]


class RFBWebSocketProtocol(_WebSocketProtocol):
    """One browser terminal: checks the handshake (and a key proof when the
    page offers one), then relays binary messages.

    The RFB protocol (and so the terminal's session) is built only once the
    handshake has been accepted and the key, if any, proven; a refused
    browser never reaches the relay.
    """

    factory: RFBWebSocketFactory
    _proto: RFBStream | None = None
    _nonce: bytes | None = None  # sent; its proof has not arrived yet
    _proof_timer: Timer | None = None

    def __init__(self, addr: object) -> None:
        super().__init__()
        self.addr = addr

    def onConnect(self, request: ConnectionRequest) -> str | None:
        secure = interfaces.ISSLTransport.providedBy(self.transport)
        host = request.headers.get("host")
        if not origin_allowed(request.origin, host, secure, self.factory.options):
            self.factory.refusals(
                logging.WARNING,
                "browser terminal %s: origin %r refused",
                request.peer,
                request.origin,
            )
            raise _ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        if not request.protocols:
            return None
        for chosen in (KEY_SUBPROTOCOL, SUBPROTOCOL):
            if chosen in request.protocols:
                return chosen
        self.factory.refusals(
            logging.WARNING,
            "browser terminal %s: subprotocols %s refused",
            request.peer,
            ", ".join(request.protocols),
        )
        raise _ConnectionDeny(
            ConnectionDeny.NOT_ACCEPTABLE,
            f"only the {KEY_SUBPROTOCOL!r} and {SUBPROTOCOL!r} subprotocols are spoken",
        )

    def onOpen(self) -> None:
        if self.websocket_protocol_in_use != KEY_SUBPROTOCOL:
            self._start_rfb(None)
            return
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self.sendMessage(self._nonce, isBinary=True)
        self._proof_timer = self.factory.reactor.callLater(
            self.factory.options.key_proof_timeout,
            self._refuse_key,
            f"no key proof within {self.factory.options.key_proof_timeout:g} s",
        )

    def _start_rfb(self, proven_key: str | None) -> None:
        proto = self.factory.rfb_factory.buildProtocol(self.addr)
        if proto is None:
            self.sendClose(1000, "no terminal available")
            return
        if proven_key is not None and isinstance(proto, RFBServerProtocol):
            proto.proven_key = proven_key  # before RFB's first byte
        self._proto = proto
        proto.makeConnection(self)

    def onMessageFrameBegin(self, length: int) -> None:
        if self._nonce is not None and self.message_data_total_length + length > MAX_PROOF_BYTES:
            self._refuse_key(f"the key proof is over {MAX_PROOF_BYTES} bytes")
        super().onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._nonce is not None:
            self._check_key_proof(self._nonce, payload, isBinary)
            return
        if self._proto is None:
            return
        if not isBinary:
            self._fail_connection(
                self.CLOSE_STATUS_CODE_UNSUPPORTED_DATA, "RFB travels in binary messages"
            )
            return
        self._proto.dataReceived(payload)

    def _check_key_proof(self, nonce: bytes, payload: bytes, isBinary: bool) -> None:
        self._nonce = None
        self._cancel_proof_timer()
        try:
            if not isBinary:
                raise KeyProofError("the key proof came as a text message")
            spki, signature = split_key_proof(payload)
            fingerprint = verify_key_proof(spki, signature, nonce)
        except KeyProofError as exc:
            self._refuse_key(str(exc))
            return
        log.info("browser terminal %s proved key %s", self.peer, fingerprint)
        self._start_rfb(fingerprint)

    def _refuse_key(self, reason: str) -> None:
        self._nonce = None
        self._cancel_proof_timer()
        self._fail_connection(CLOSE_POLICY, f"key proof refused: {reason}")

    def _fail_connection(
        self,
        code: int = _WebSocketProtocol.CLOSE_STATUS_CODE_GOING_AWAY,
        reason: str = "going away",
    ) -> None:
        """Every refusal after the handshake (a bound broken, a bad key proof, a
        text message, a protocol error) comes here: log it once, send a close
        frame with ``code``; the peer is dropped when it answers, or
        ``close_handshake_timeout`` later."""
        if self.state == self.STATE_OPEN and not self.failedByMe:
            self.factory.refusals(
                logging.WARNING, "browser terminal %s: closing with %d: %s", self.peer, code, reason
            )
        super()._fail_connection(code, reason)

    def onAutoPingTimeout(self) -> None:
        self.factory.refusals(
            logging.INFO,
            "browser terminal %s: no answer to a ping within %g s; dropped",
            self.peer,
            self.factory.options.ping_timeout,
        )
        super().onAutoPingTimeout()

    def _cancel_proof_timer(self) -> None:
        timer, self._proof_timer = self._proof_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._nonce = None
        self._cancel_proof_timer()
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.connectionLost(_Failure(ConnectionDone(reason or "WebSocket closed")))

    def write(self, data: bytes) -> None:
        """Send RFB bytes as binary messages of at most WS_SEND_PIECE bytes (and
        never over the message bound)."""
        step = min(WS_SEND_PIECE, self.factory.options.max_message_size)
        view = memoryview(data)
        for start in range(0, len(view), step):
            self.sendMessage(bytes(view[start : start + step]), isBinary=True)


class RFBWebSocketFactory(_WebSocketFactory):
    """Wraps an RFB server factory (thinserve.rfbserver.RFBServerFactory)."""

    def __init__(
        self,
        rfb_factory: RFBFactory,
        options: WebSocketOptions | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        # RFB updates are already compressed by their encodings; permessage-deflate
        # would only spend CPU (and is one more decompressor to bound).
        super().__init__(rfb_factory, url=None, enableCompression=False)
        self.rfb_factory = rfb_factory
        self.options = options = options or WebSocketOptions()
        self.refusals = refusals or RefusalLog(log)
        size = options.max_message_size
        self.setProtocolOptions(
            maxFramePayloadSize=size,
            maxMessagePayloadSize=size,
            openHandshakeTimeout=options.open_handshake_timeout,
            closeHandshakeTimeout=options.close_handshake_timeout,
            # A refusal sends its close code, then the peer has
            # close_handshake_timeout to answer before the TCP connection is dropped.
            failByDrop=False,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_timeout if options.ping_interval else 0,
            webStatus=False,
            allowNullOrigin=True,  # "null" goes to onConnect's check like any other origin
        )

    # Twisted types a factory's protocols generically; autobahn's factory leaves
    # that at Twisted's default, which a protocol with a typed ``factory`` is not.
    def buildProtocol(self, addr: object) -> RFBWebSocketProtocol:  # type: ignore[override]
        proto = RFBWebSocketProtocol(addr)
        proto.factory = self
        return proto


class RFBWebSocketResource(_WebSocketResource):
    """The WebSocket endpoint inside a twisted.web site.

    It takes the connection over from the HTTP channel: the channel stops
    being the connection's producer (so the RFB protocol can register itself
    and get flow control from the socket) and, when it is a
    ``BoundedHTTPChannel``, stops its clocks and passes on the bytes that
    came right behind the upgrade request.  The upgrade request itself is
    replayed to the WebSocket protocol, which answers the handshake.
    """

    _factory: RFBWebSocketFactory

    def render(self, request: Request) -> bytes | int:
        channel = request.channel
        transport = cast(_Socket | None, channel.transport)
        if transport is None:  # not HTTP/1.1 over a connection of its own
            return super().render(request)
        proto = self._factory.buildProtocol(transport.getPeer())
        transport.unregisterProducer()
        channel.transport = None
        taker = cast(IProtocol, proto)  # a Twisted Protocol, which provides IProtocol
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = taker
        elif isinstance(transport.protocol, ProtocolWrapper):
            transport.protocol.wrappedProtocol = taker
        else:
            transport.protocol = proto
        proto.makeConnection(transport)
        hand_over = getattr(channel, "hand_over", None)
        if hand_over is not None:
            hand_over(proto)
        resume = getattr(transport, "resumeProducing", None)
        if resume is not None:  # twisted.web may have paused reading while it parsed
            resume()
        head = [request.method + b" " + request.uri + b" HTTP/1.1\r\n"]
        for name, values in request.requestHeaders.getAllRawHeaders():
            head.append(name + b": " + b",".join(values) + b"\r\n")
        body = request.content.read() if request.content is not None else b""
        proto.dataReceived(b"".join(head) + b"\r\n" + body)
        return NOT_DONE_YET


def rfb_websocket_resource(
    rfb_factory: RFBFactory, options: WebSocketOptions | None = None
) -> RFBWebSocketResource:
    """A twisted.web resource speaking RFB over WebSocket with ``rfb_factory``."""
    return RFBWebSocketResource(RFBWebSocketFactory(rfb_factory, options))
