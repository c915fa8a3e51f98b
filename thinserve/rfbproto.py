"""What the Twisted RFB protocols of both roles share."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import protocol

log = logging.getLogger(__name__)


class RFBProtocolBase(protocol.Protocol):
    """Glue around a sans-I/O connection (``self.conn``) of either role."""

    conn: Any
    peer_kind = "peer"  # how log lines name the other side
    error: str | None = None
    registered = False  # registered with the transport as its producer
    closing = ""  # why this side closes the connection, once it does

    def flush(self) -> None:
        """Write everything the connection has queued."""
        if self.transport is None:
            return
        while data := self.conn.data_to_send():
            self.transport.write(data)

    def write_before_tls(self) -> None:
        """Write the last bytes that go out in clear, and only those."""
        clear = self.conn.data_to_send()
        if clear:
            self.transport.write(clear)  # type: ignore[union-attr]

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
        if self.transport is None:
            return
        if self.registered:
            self.registered = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def peer(self) -> str:
        try:
            return str(self.transport.getPeer())  # type: ignore[union-attr]
        except Exception:
            return "?"
