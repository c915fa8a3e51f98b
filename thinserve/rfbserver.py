"""Twisted glue for the RFB server role.

``RFBServerProtocol`` wraps a ServerConnection: handshake and TLS, auth
checks, flow control (it registers as a streaming producer, so a slow
terminal pauses it instead of queueing data).  What the terminal sees is up
to its Session (thinserve.relay.session.TerminalSession).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import interfaces, protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.rfb import messages as m
from protocols.rfb.constants import SecurityType
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import PlainCredentials, StartTLS, VncAuthResponse
from protocols.rfb.security.vncauth import check_response
from protocols.rfb.server import ServerConnection, ServerEvent

from .rfbproto import RFBProtocolBase

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0  # seconds a peer has to get through the handshake


@dataclass(frozen=True)
class ServerOptions:
    methods: tuple[int, ...] = (SecurityType.NONE,)
    password: str | None = None  # VNC authentication
    users: dict[str, str] = field(default_factory=dict)  # VeNCrypt Plain
    cert_file: str | None = None  # X509 subtypes
    key_file: str | None = None


class Session(Protocol):
    """What an RFBServerProtocol reports to once the handshake is done."""

    def attach(self, proto: RFBServerProtocol) -> None: ...
    def handle(self, event: ServerEvent) -> None: ...
    def resumed(self) -> None: ...
    def detach(self) -> None: ...


@implementer(interfaces.IPushProducer)
class RFBServerProtocol(RFBProtocolBase):
    peer_kind = "terminal"

    def __init__(self, options: ServerOptions, session: Session) -> None:
        self.options = options
        self.conn = ServerConnection(options.methods)
        self.session = session
        self.paused = False
        self.error: str | None = None
        self._attached = False
        self._deadline: object | None = None

    # -- Twisted callbacks --------------------------------------------------------
    def connectionMade(self) -> None:
        from twisted.internet import reactor

        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._deadline = reactor.callLater(  # type: ignore[attr-defined]
            HANDSHAKE_TIMEOUT, self.fail, "no handshake within the time allowed"
        )
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        try:
            for event in self.conn.receive_data(data):
                self._dispatch(event)
        except ProtocolError as exc:
            self.fail(exc.reason)
            return
        self.flush()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._cancel_deadline()
        if self._attached:
            self._attached = False
            self.session.detach()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._attached:
            self.session.resumed()

    def stopProducing(self) -> None:
        self.paused = True

    # -- events ---------------------------------------------------------------------
    def _dispatch(self, event: ServerEvent) -> None:
        if isinstance(event, StartTLS):
            self._start_tls(event)
        elif isinstance(event, VncAuthResponse):
            self._answer_auth(self._vnc_auth_ok(event))
        elif isinstance(event, PlainCredentials):
            self._answer_auth(self._plain_ok(event))
        elif isinstance(event, m.ClientInit):
            self._cancel_deadline()
            self._attached = True
            self.session.attach(self)
        elif self._attached:
            self.session.handle(event)

    def _start_tls(self, event: StartTLS) -> None:
        from thinserve.tls import server_context_factory

        self.write_before_tls()
        factory = server_context_factory(
            event.anonymous, cert_file=self.options.cert_file, key_file=self.options.key_file
        )
        self.transport.startTLS(factory)  # type: ignore[union-attr]

    def _vnc_auth_ok(self, event: VncAuthResponse) -> bool:
        password = self.options.password
        return password is not None and check_response(password, event.challenge, event.response)

    def _plain_ok(self, event: PlainCredentials) -> bool:
        expected = self.options.users.get(event.username)
        return expected is not None and hmac.compare_digest(
            expected.encode(), event.password.encode()
        )

    def _answer_auth(self, ok: bool) -> None:
        if ok:
            for event in self.conn.accept_auth():
                self._dispatch(event)
        else:
            log.warning("authentication failed from %s", self.peer())
            self.conn.reject_auth("Authentication failed")
            self.flush()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():  # type: ignore[attr-defined]
            self._deadline.cancel()  # type: ignore[attr-defined]
        self._deadline = None


class RFBServerFactory(protocol.Factory):
    def __init__(self, options: ServerOptions, make_session: Callable[[], Session]) -> None:
        self.options = options
        self.make_session = make_session

    def buildProtocol(self, addr: object) -> RFBServerProtocol:
        return RFBServerProtocol(self.options, self.make_session())
