"""Measuring Xvnc with thinserve's own client (Twisted glue, same decoders).

Each capture is a fresh connection: once ServerInit arrives, the client
sends SetEncodings with the row's encodings and a non-incremental request
for the whole screen, and the clock starts.  Every byte the transport
delivers from then on is kept, until the client reports the update applied
to its framebuffer; those bytes are the update message.  The time covers
Xvnc's encoding, the loopback transfer and thinserve's decoding, which
overlap as the update streams in.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.failure import Failure

from protocols.rfb.client import ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from thinserve.rfbclient import ClientOptions, RFBClientProtocol, fetch_framebuffer, tcp

from .encodings import Row

CAPTURE_TIMEOUT = 60.0


@dataclass
class Capture:
    """One update from the peer: its bytes, the wall time, what was decoded."""

    message: bytes = b""
    seconds: float = 0.0
    framebuffer: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))
    update: UpdateDone | None = None


class CapturingProtocol(RFBClientProtocol):
    """Requests one full update after ServerInit and keeps its bytes."""

    def __init__(self, row: Row) -> None:
        super().__init__(ClientOptions(), self._event)
        self.row = row
        self.chunks: list[bytes] = []
        self.recording = False
        self.started = 0.0
        self.done: defer.Deferred[Capture] = defer.Deferred()
        self.closed.addErrback(lambda _failure: None)  # the end is reported through done

    def dataReceived(self, data: bytes) -> None:
        if self.recording:
            self.chunks.append(data)
        super().dataReceived(data)

    def _event(self, proto: RFBClientProtocol, event: ClientEvent) -> None:
        if isinstance(event, ServerInitReceived):
            self.conn.set_encodings(self.row.encodings)
            self.conn.request_update(incremental=False)
            self.recording = True
            self.started = time.perf_counter()
        elif isinstance(event, UpdateDone) and self.recording:
            seconds = time.perf_counter() - self.started
            self.recording = False
            capture = Capture(b"".join(self.chunks), seconds, self.conn.framebuffer.copy(), event)
            if not self.done.called:
                self.done.callback(capture)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if not self.done.called:
            why = self.error or reason.getErrorMessage()
            self.done.errback(ConnectionError(f"Xvnc closed the connection: {why}"))


class _Factory(protocol.Factory):
    def __init__(self, row: Row) -> None:
        self.row = row

    def buildProtocol(self, addr: object) -> CapturingProtocol:
        return CapturingProtocol(self.row)


async def capture_update(port: int, row: Row) -> Capture:
    """Connect to Xvnc on loopback ``port`` and capture one full update."""
    endpoint = endpoints.clientFromString(reactor, tcp("127.0.0.1", port))
    proto: CapturingProtocol = await endpoint.connect(_Factory(row))
    proto.done.addTimeout(CAPTURE_TIMEOUT, reactor)
    try:
        return await proto.done
    finally:
        proto.transport.loseConnection()  # type: ignore[union-attr]


async def screen_pixels(port: int) -> np.ndarray:
    """The peer's whole framebuffer, fetched as Raw."""
    pixels, _ = await fetch_framebuffer(tcp("127.0.0.1", port), (Encoding.RAW,))
    return pixels


def share_by_encoding(update: UpdateDone) -> dict[int, float]:
    """Fraction of the updated pixels each encoding carried."""
    areas: dict[int, int] = {}
    for rect, encoding in zip(update.rects, update.encodings, strict=True):
        areas[encoding] = areas.get(encoding, 0) + rect.area
    total = sum(areas.values()) or 1
    return {encoding: area / total for encoding, area in areas.items()}
