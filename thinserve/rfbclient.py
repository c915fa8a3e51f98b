"""Twisted glue for the RFB client role: a Protocol around ClientConnection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.rfb.client import ClientConnection, ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import StartTLS
from protocols.rfb.pixelformat import PixelFormat

from .rfbproto import RFBProtocolBase, TLSTransport

if TYPE_CHECKING:
    from .tls import CheckedClientContext, ClientCertificate, ServerCheck

log = logging.getLogger(__name__)

EventHandler = Callable[["RFBClientProtocol", ClientEvent], None]


@dataclass(frozen=True)
class ClientOptions:
    """How to connect.  For VeNCrypt X509 subtypes: ``ca_file`` (the platform's
    trust store when None) checks the server, unless ``server_check`` is
    given, which then decides (thinserve.tls.CheckedClientContext: it is told
    whether ``ca_file`` vouches for the server); ``client_certificate`` is
    shown to servers that ask for one."""

    password: str | None = None
    username: str | None = None
    methods: Sequence[int] | None = None
    ca_file: str | None = None
    shared: bool = True
    client_certificate: ClientCertificate | None = None
    server_check: ServerCheck | None = None


@implementer(IHandshakeListener)
class RFBClientProtocol(RFBProtocolBase[ClientConnection]):
    """Feeds bytes to a ClientConnection and hands its events to ``on_event``."""

    peer_kind = "RFB server"

    @property
    def link(self) -> TLSTransport | None:
        """``transport``: a TCP or Unix connection, which can start TLS."""
        return cast("TLSTransport | None", self.transport)

    def __init__(self, options: ClientOptions, on_event: EventHandler) -> None:
        self.options = options
        self.conn = ClientConnection(
            password=options.password,
            username=options.username,
            methods=options.methods,
            shared=options.shared,
        )
        self.on_event = on_event
        self.closed: defer.Deferred[Failure | None] = defer.Deferred()
        self.error: str | None = None
        self.checked_tls: CheckedClientContext | None = None
        self.refused = False  # the server failed its check: nothing it sends is read

    def connectionMade(self) -> None:
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.fail(exc.reason)
            return
        for event in events:
            if isinstance(event, StartTLS):
                self._start_tls(event)
            else:
                self.on_event(self, event)
        self.flush()

    def _start_tls(self, event: StartTLS) -> None:
        from thinserve.tls import CheckedClientContext, client_context_factory

        options = self.options
        self.write_before_tls()
        try:
            factory = client_context_factory(
                event.anonymous,
                ca_file=options.ca_file,
                client_certificate=options.client_certificate,
                server_check=options.server_check,
            )
        except (OSError, ValueError) as exc:
            self.fail(f"cannot start TLS: {exc}")
            return
        if isinstance(factory, CheckedClientContext):
            self.checked_tls = factory
        link = self.link
        if link is None:
            return
        # The RFB client is the TLS client, also on a connection the server
        # dialled (a listening viewer): then TLS goes against the TCP roles.
        same_way = getattr(link, "_tlsClientDefault", True)
        link.startTLS(factory, same_way)

    def handshakeCompleted(self) -> None:
        """TLS is up: a checked server is checked once more before any byte is read."""
        from thinserve.tls import ServerRefused

        checked, link = self.checked_tls, self.link
        if checked is None or link is None:
            return
        peer = link.getPeerCertificate()
        try:
            checked.handshake_done(peer.to_cryptography() if peer is not None else None)
        except ServerRefused as exc:
            self.refused = True
            self.error = str(exc)
            log.warning("%s %s not trusted: %s", self.peer_kind, self.peer(), exc)
            link.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        checked = self.checked_tls
        if self.error is None and checked is not None and checked.refusal is not None:
            self.error = checked.refusal
            log.warning("%s %s not trusted: %s", self.peer_kind, self.peer(), checked.refusal)
        if not self.closed.called:
            self.closed.callback(reason)


class _Factory(protocol.Factory):
    """Builds one RFBClientProtocol per connection."""

    def __init__(self, options: ClientOptions, on_event: EventHandler) -> None:
        self.options = options
        self.on_event = on_event

    def buildProtocol(self, addr: object) -> RFBClientProtocol:
        return RFBClientProtocol(self.options, self.on_event)


class _Endpoint(Protocol):
    """A stream client endpoint (IStreamClientEndpoint)."""

    def connect(self, protocolFactory: _Factory) -> defer.Deferred[RFBClientProtocol]: ...


# Twisted leaves it unannotated; it returns an IStreamClientEndpoint.
_client_endpoint = cast("Callable[[object, str], _Endpoint]", endpoints.clientFromString)


def connect(
    endpoint_description: str, options: ClientOptions, on_event: EventHandler
) -> defer.Deferred[RFBClientProtocol]:
    """Connect to an RFB server, e.g. ``tcp:127.0.0.1:5901`` or ``unix:/run/x.sock``."""
    endpoint = _client_endpoint(reactor, endpoint_description)
    return endpoint.connect(_Factory(options, on_event))


def tcp(host: str, port: int) -> str:
    """An endpoint description for a TCP address (IPv6 literals included)."""
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


async def fetch_framebuffer(
    endpoint_description: str,
    encodings: Sequence[int] = (Encoding.RAW,),
    options: ClientOptions | None = None,
    pixel_format: PixelFormat | None = None,
    updates: int = 1,
) -> tuple[np.ndarray, list[UpdateDone]]:
    """Connect, ask for the whole screen ``updates`` times, return the framebuffer.

    The first request is non-incremental; later ones incremental.  Returns
    the framebuffer and every UpdateDone seen (to check which encodings the
    server used).
    """
    done: defer.Deferred[None] = defer.Deferred()
    seen: list[UpdateDone] = []

    def on_event(proto: RFBClientProtocol, event: ClientEvent) -> None:
        conn = proto.conn
        if isinstance(event, ServerInitReceived):
            if pixel_format is not None:
                conn.set_pixel_format(pixel_format)
            conn.set_encodings(list(encodings))
            conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            seen.append(event)
            if len(seen) >= updates:
                if not done.called:
                    done.callback(None)
            else:
                conn.request_update(incremental=True, rect=Rect(0, 0, conn.width, conn.height))

    proto = await connect(endpoint_description, options or ClientOptions(), on_event)

    def lost(reason: Failure | None) -> None:
        if not done.called:
            why = proto.error or (reason.getErrorMessage() if reason else "closed")
            done.errback(ConnectionError(f"RFB connection ended early: {why}"))

    proto.closed.addBoth(lost)
    try:
        await done
    finally:
        if proto.link is not None:
            proto.link.loseConnection()
    return proto.conn.framebuffer.copy(), seen
