"""Twisted glue for the RFB client role: a Protocol around ClientConnection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.failure import Failure

from protocols.rfb.client import ClientConnection, ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from protocols.rfb.encodings import Rect
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import StartTLS
from protocols.rfb.pixelformat import PixelFormat

from .rfbproto import RFBProtocolBase

log = logging.getLogger(__name__)

EventHandler = Callable[["RFBClientProtocol", ClientEvent], None]


@dataclass(frozen=True)
class ClientOptions:
    password: str | None = None
    username: str | None = None
    methods: Sequence[int] | None = None
    ca_file: str | None = None
    shared: bool = True


class RFBClientProtocol(RFBProtocolBase):
    """Feeds bytes to a ClientConnection and hands its events to ``on_event``."""

    peer_kind = "RFB server"

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

    def connectionMade(self) -> None:
        self.flush()

    def dataReceived(self, data: bytes) -> None:
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
        from thinserve.tls import client_context_factory

        self.write_before_tls()
        self.transport.startTLS(  # type: ignore[attr-defined]
            client_context_factory(event.anonymous, ca_file=self.options.ca_file)
        )

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.closed.called:
            self.closed.callback(reason)


class _Factory(protocol.Factory):
    def __init__(self, options: ClientOptions, on_event: EventHandler) -> None:
        self.options = options
        self.on_event = on_event

    def buildProtocol(self, addr: object) -> RFBClientProtocol:
        return RFBClientProtocol(self.options, self.on_event)


def connect(
    endpoint_description: str, options: ClientOptions, on_event: EventHandler
) -> defer.Deferred[RFBClientProtocol]:
    """Connect to an RFB server, e.g. ``tcp:127.0.0.1:5901`` or ``unix:/run/x.sock``."""
    endpoint = endpoints.clientFromString(reactor, endpoint_description)
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
        proto.transport.loseConnection()  # type: ignore[union-attr]
    return proto.conn.framebuffer.copy(), seen
