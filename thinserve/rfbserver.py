"""Twisted glue for the RFB server role.

``RFBServerProtocol`` wraps a ServerConnection: handshake and TLS, auth
checks, flow control (it registers as a streaming producer, so a slow
terminal pauses it instead of queueing data).  What the terminal sees is up
to its Session (thinserve.relay.session.TerminalSession).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import error, interfaces, protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.identity import certificate_fingerprint
from protocols.rfb import messages as m
from protocols.rfb.constants import SecurityType
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import PlainCredentials, StartTLS, VncAuthResponse
from protocols.rfb.server import ServerConnection, ServerEvent

from .admission import Admission, Refusal
from .clock import Timer, reactor_clock
from .credentials import Credentials
from .linksecurity import SecurityPolicy
from .rfbproto import RFBProtocolBase

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0  # seconds a peer has to get through the handshake


@dataclass(frozen=True)
class ServerOptions:
    methods: tuple[int, ...] = (SecurityType.NONE,)
    password: str | None = None  # VNC authentication
    users: dict[str, str] = field(default_factory=dict)  # VeNCrypt Plain, fixed users
    cert_file: str | None = None  # X509 subtypes
    key_file: str | None = None
    # When set, the methods offered depend on the peer's address (and
    # ``methods`` is not used).
    policy: SecurityPolicy | None = None
    # What checks passwords (with a blacklist per source, and hot-desk users):
    # made from ``password`` and ``users`` unless given.
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        if self.credentials is None:
            made = Credentials(self.password, self.users)
            object.__setattr__(self, "credentials", made)

    def methods_for(self, host: str) -> tuple[int, ...]:
        return self.methods if self.policy is None else self.policy.methods_for(host)


class Session(Protocol):
    """What an RFBServerProtocol reports to once the handshake is done."""

    def attach(self, proto: RFBServerProtocol) -> None: ...
    def handle(self, event: ServerEvent) -> None: ...
    def resumed(self) -> None: ...
    def detach(self, why: str) -> None: ...


class _Peered(Protocol):
    """A transport's getPeer (ITransport's, which mypy cannot check: see thinserve.clock)."""

    def getPeer(self) -> object: ...


@implementer(interfaces.IPushProducer)
class RFBServerProtocol(RFBProtocolBase[ServerConnection]):
    peer_kind = "terminal"

    def __init__(
        self, options: ServerOptions, session: Session, methods: tuple[int, ...] | None = None
    ) -> None:
        self.options = options
        self.conn = ServerConnection(methods or options.methods)
        self.session = session
        self.paused = False
        # What the connection proved: a key's fingerprint (a TLS client
        # certificate, or the browser's WebSocket key proof set before RFB
        # starts), and a hot-desk user whose password was checked.
        self.proven_key: str | None = None
        self.login_user: str | None = None
        self._tls_started = False
        self.on_closed: Callable[[], None] | None = None
        self.dialled = False  # thinserve opened the TCP connection (a listening terminal)
        # The handshake is over and the session attached; it stays attached
        # while the connection is open (Twisted's ``connected``).
        self._attached = False
        self._deadline: Timer | None = None

    # -- Twisted callbacks --------------------------------------------------------
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)
        self.registered = True
        self._deadline = reactor_clock().callLater(
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
        self.connected = False
        self.closing = self.closing or _lost_words(reason)
        if self.on_closed is not None:
            self.on_closed()
        self._cancel_deadline()
        if self._attached:
            self.session.detach(self.closing)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._attached and self.connected:
            self.session.resumed()

    def stopProducing(self) -> None:
        self.paused = True

    # -- events ---------------------------------------------------------------------
    def _dispatch(self, event: ServerEvent) -> None:
        if self._attached:  # the handshake's events all come before
            self.session.handle(event)
        elif isinstance(event, StartTLS):
            self._start_tls(event)
        elif isinstance(event, VncAuthResponse | PlainCredentials):
            self._check(event)
        elif isinstance(event, m.ClientInit):
            self._cancel_deadline()
            self._note_client_certificate()
            self._attached = True
            self.session.attach(self)

    def _start_tls(self, event: StartTLS) -> None:
        from thinserve.tls import server_context_factory

        self.write_before_tls()
        factory = server_context_factory(
            event.anonymous, cert_file=self.options.cert_file, key_file=self.options.key_file
        )
        # thinserve is the TLS server even on connections it dialled (listening
        # terminals): Twisted's default role follows who opened the TCP connection.
        assert self.transport is not None
        self.transport.startTLS(factory, not self.dialled)
        self._tls_started = True

    def _note_client_certificate(self) -> None:
        """A TLS client certificate proves its key: the TLS handshake, done
        before any RFB byte inside it, signed its transcript with that key."""
        if not self._tls_started or self.transport is None:
            return
        certificate = self.transport.getPeerCertificate()
        if certificate is not None:
            self.proven_key = certificate_fingerprint(certificate.to_cryptography())

    def _check(self, event: VncAuthResponse | PlainCredentials) -> None:
        """Password checks may be slow (Argon2 in a thread): the handshake
        waits, and goes on when the verdict comes back."""
        assert self.options.credentials is not None
        checked = self.options.credentials.check(self.peer_host(), event)
        checked.addCallback(self._checked, event)

    def _checked(self, refusal: str | None, event: VncAuthResponse | PlainCredentials) -> None:
        if not self.connected:
            return
        if refusal is None and isinstance(event, PlainCredentials):
            assert self.options.credentials is not None
            self.login_user = event.username if self.options.credentials.hot_desk(event) else None
        self._answer_auth(refusal is None, refusal or "")
        self.flush()

    def _answer_auth(self, ok: bool, reason: str = "") -> None:
        if ok:
            for event in self.conn.accept_auth():
                self._dispatch(event)
        else:
            self.conn.reject_auth(reason or "Authentication failed")
            self.flush()
            self.close()

    def peer_host(self) -> str:
        """The peer's address; "local" for Unix sockets and in-process transports."""
        transport: _Peered | None = self.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", "") or "local")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


def _lost_words(reason: Failure | None) -> str:
    if reason is None or isinstance(reason.value, error.ConnectionDone):
        return "closed by the terminal"
    return f"connection lost ({reason.getErrorMessage()})"


class RFBServerFactory(protocol.Factory):
    def __init__(
        self,
        options: ServerOptions,
        make_session: Callable[[], Session],
        admission: Admission | None = None,
    ) -> None:
        self.options = options
        self.make_session = make_session
        self.admission = admission

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        host = str(getattr(addr, "host", "") or "local")
        admission = self.admission
        if admission is None:
            return RFBServerProtocol(
                self.options, self.make_session(), self.options.methods_for(host)
            )
        refusal = admission.refusal(host)
        if refusal is not None:
            log.warning("refused a connection from %s: %s", host, refusal)
            return Refusal(refusal)
        proto = RFBServerProtocol(self.options, self.make_session(), self.options.methods_for(host))
        admission.opened(host)
        proto.on_closed = lambda: admission.closed(host)
        return proto
