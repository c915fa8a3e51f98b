"""Connection caps on the terminal port: per source address and in total.

A connection past a cap is answered the RFB way: the server's version,
then, in place of the security types, "connection failed" with the reason
(every viewer shows it), and the connection closes.  Such a refusal costs
a few hundred bytes and no session.  Terminals already connected are never
the ones refused: caps only apply to new connections.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from twisted.internet import protocol

from protocols.rfb.constants import Version
from protocols.rfb.errors import ProtocolError
from protocols.rfb.limits import DEFAULT_LIMITS
from protocols.rfb.security import wire

from .clock import Timer, reactor_clock
from .rfbproto import Transport

log = logging.getLogger(__name__)

REFUSAL_SECONDS = 5.0  # how long a refused client has to send its version


@dataclass
class Admission:
    max_total: int = 1000
    max_per_address: int = 16
    by_address: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_address.values())

    def refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` may not in, or None."""
        if self.total >= self.max_total:
            return f"This server has {self.max_total} connections, its maximum; try again later."
        if self.by_address[host] >= self.max_per_address:
            return (
                f"Too many connections from {host} ({self.max_per_address}); "
                "close one and try again."
            )
        return None

    def opened(self, host: str) -> None:
        self.by_address[host] += 1

    def closed(self, host: str) -> None:
        self.by_address[host] -= 1
        if self.by_address[host] <= 0:
            del self.by_address[host]


class Refusal(protocol.Protocol):
    """Says why a connection is refused, in RFB, then closes."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._received = b""
        self._deadline: Timer | None = None

    @property
    def _link(self) -> Transport:
        """``transport``, which Twisted sets before any other call."""
        assert self.transport is not None
        return cast(Transport, self.transport)

    def connectionMade(self) -> None:
        link = self._link
        link.write(Version.V3_8.value)
        self._deadline = reactor_clock().callLater(REFUSAL_SECONDS, link.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        self._received = (self._received + data)[: wire.VERSION_SIZE]
        if len(self._received) < wire.VERSION_SIZE:
            return
        try:
            version = wire.server_version_for(*wire.parse_version(self._received))
        except ProtocolError:
            version = Version.V3_3
        link = self._link
        link.write(wire.connection_failed(version, self.reason, DEFAULT_LIMITS.max_reason))
        link.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
