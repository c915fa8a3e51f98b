"""The terminal's side of one TCP connection: an RFB client that asks before it starts.

Whichever side dialled, the terminal is the RFB client.  A connection only
goes ahead if the terminal has no session yet (``Host.connection_made``);
otherwise it is closed at once: one server at a time.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import protocol
from twisted.python.failure import Failure

from protocols.rfb.client import ClientEvent
from thinserve.rfbclient import ClientOptions, RFBClientProtocol


class Host(Protocol):
    """What a terminal connection reports to (the terminal app)."""

    def connection_options(self) -> ClientOptions:
        """How to speak to the server of a new connection."""
        ...

    def connection_made(self, proto: TerminalProtocol) -> bool: ...
    def connection_lost(self, proto: TerminalProtocol, reason: Failure) -> None: ...
    def rfb_event(self, proto: RFBClientProtocol, event: ClientEvent) -> None: ...


class TerminalProtocol(RFBClientProtocol):
    def __init__(self, host: Host) -> None:
        super().__init__(host.connection_options(), host.rfb_event)
        self.host = host
        self.accepted = False
        self.closed.addErrback(lambda _failure: None)  # the host hears of the end itself

    def connectionMade(self) -> None:
        self.accepted = self.host.connection_made(self)
        if not self.accepted:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self.accepted:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if self.accepted:
            self.accepted = False
            self.host.connection_lost(self, reason)


class TerminalFactory(protocol.Factory):
    noisy = False

    def __init__(self, host: Host) -> None:
        self.host = host

    def buildProtocol(self, addr: object) -> TerminalProtocol:
        return TerminalProtocol(self.host)
