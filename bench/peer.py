"""Measuring Xvnc with thinserve's own client (same decoders), two ways.

Each capture is a fresh connection: once ServerInit arrives, the client
sends SetEncodings with the row's encodings and a non-incremental request
for the whole screen, and the clock starts.

:func:`capture_update` (Twisted glue, on the running asyncio reactor)
decodes the bytes as they arrive and stops the clock when the client
reports the update applied to its framebuffer; the bytes it kept are the
update message.  The time covers Xvnc's encoding, the loopback transfer
and thinserve's decoding, which overlap as the update streams in.

:func:`time_last_byte` (a plain blocking socket, run in a thread) times
only Xvnc's side: it receives into a list of chunks, each stamped with
its arrival time, and decodes nothing while bytes keep coming.  Only when
the socket has been quiet for ``QUIET_SECONDS`` are the chunks fed to a
ClientConnection, to see whether the update is complete; the chunk that
completes it gives the time of the last byte.  On Linux the arrival time
is the kernel's receive timestamp (SO_TIMESTAMPNS), so bytes that arrive
while the client decodes in a gap are still timed when they arrived.  A
receive buffer of ``RECEIVE_BUFFER`` bytes keeps Xvnc from waiting on
this client while it decodes; the bytes left waiting in the socket after
each gap are recorded to check that.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import termios
import time
from dataclasses import dataclass, field

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.failure import Failure

from protocols.rfb.client import ClientConnection, ClientEvent, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from thinserve.rfbclient import ClientOptions, RFBClientProtocol, fetch_framebuffer, tcp

from .encodings import Row

CAPTURE_TIMEOUT = 60.0
# The socket this long without bytes: look whether the update is done.  Longer
# than Xvnc's pauses between rectangles here, so decoding seldom competes with
# its encoding for the cores; it does not move the time, which is the kernel's.
QUIET_SECONDS = 0.05
RECEIVE_BUFFER = 8 * 1024 * 1024  # SO_RCVBUF asked for; the kernel may cap it (rmem_max)
CHUNK_BYTES = 1 << 20
SO_TIMESTAMPNS = 35  # Linux (asm-generic); also the type of its control message
TIMESPEC = struct.Struct("@ll")


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


@dataclass(frozen=True)
class Chunk:
    arrived_ns: int  # CLOCK_REALTIME, as time.time_ns()
    data: bytes


@dataclass(frozen=True)
class LastByte:
    """One capture timed from the request to the arrival of the update's last byte."""

    seconds: float
    message_bytes: int
    backlog: int  # the most bytes left waiting in the socket after a decoding gap
    receive_buffer: int  # SO_RCVBUF as the kernel reports it; about half of it holds data

    @property
    def unhindered(self) -> bool:
        """Whether the waiting bytes always stayed within half the receive buffer.

        Only then is it certain that Xvnc never waited for this client.
        """
        return self.backlog <= self.receive_buffer // 2


def timestamped_socket(port: int) -> socket.socket:
    """A loopback connection with a large receive buffer and kernel receive timestamps."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    if sys.platform == "linux":
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(CAPTURE_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def receive_chunk(sock: socket.socket) -> Chunk:
    """The next bytes and when they arrived (the kernel's time when it gives one)."""
    data, ancillary, _flags, _address = sock.recvmsg(CHUNK_BYTES, 64)
    now = time.time_ns()
    if not data:
        raise ConnectionError("Xvnc closed the connection")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = TIMESPEC.unpack(payload[: TIMESPEC.size])
            return Chunk(seconds * 1_000_000_000 + nanoseconds, data)
    return Chunk(now, data)


def queued_bytes(sock: socket.socket) -> int:
    """Bytes received by the kernel and not yet read (FIONREAD)."""
    answer = fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", answer)[0])


def handshake(sock: socket.socket, conn: ClientConnection) -> None:
    """Run the handshake until ServerInit has been received."""
    while True:
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("Xvnc closed the connection during the handshake")
        if any(isinstance(e, ServerInitReceived) for e in conn.receive_data(data)):
            return


def completing_chunk(conn: ClientConnection, chunks: list[Chunk]) -> Chunk | None:
    """Feed ``chunks`` in order; the one after which the update is done, if any."""
    for chunk in chunks:
        if any(isinstance(e, UpdateDone) for e in conn.receive_data(chunk.data)):
            return chunk
    return None


def receive_update(sock: socket.socket, conn: ClientConnection) -> tuple[Chunk, int, int]:
    """Buffer the update as it arrives, decoding only when the socket is quiet.

    Returns the chunk holding its last byte, the bytes received and the
    most bytes left waiting in the socket after a decoding gap.
    """
    deadline = time.monotonic() + CAPTURE_TIMEOUT
    pending: list[Chunk] = []
    received = backlog = 0
    sock.settimeout(QUIET_SECONDS)
    while time.monotonic() < deadline:
        try:
            chunk = receive_chunk(sock)
        except TimeoutError:
            done = completing_chunk(conn, pending)
            if done is not None:
                return done, received, backlog
            pending.clear()
            backlog = max(backlog, queued_bytes(sock))
            continue
        pending.append(chunk)
        received += len(chunk.data)
    raise TimeoutError(f"no complete update from Xvnc within {CAPTURE_TIMEOUT:.0f} s")


def time_last_byte(port: int, row: Row) -> LastByte:
    """Connect to Xvnc on loopback ``port``; time one full update to its last byte.

    Blocking: run it in a thread (``twisted.internet.threads.deferToThread``).
    """
    with timestamped_socket(port) as sock:
        conn = ClientConnection()
        handshake(sock, conn)
        conn.set_encodings(row.encodings)
        conn.request_update(incremental=False)
        request = conn.data_to_send()
        started = time.time_ns()
        sock.sendall(request)
        last, received, backlog = receive_update(sock, conn)
        buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    seconds = (last.arrived_ns - started) / 1e9
    return LastByte(seconds, received, backlog, buffer)
