"""One full-screen update, timed: first rectangle, last byte, decoded.

Plain blocking sockets, thinserve's own sans-I/O client, no reactor; the
same code for Xvnc and for thinserve.  A *visit* to a server is two
connections, one after the other, each with security type None and a
picture on the desktop that no terminal has been sent yet:

1. the timing connection.  After ServerInit it sends SetEncodings and a
   non-incremental FramebufferUpdateRequest for the whole screen (the
   clock starts as the request leaves), takes the update in, then sends a
   second such request on the same connection: the *refresh*.  Bytes are
   received as :func:`bench.peer.time_last_byte` receives them: into
   chunks stamped with the kernel's receive time (SO_TIMESTAMPNS), decoded
   only once the socket has been quiet for ``QUIET_SECONDS``, so decoding
   never holds up the reading while bytes keep coming.  Fed in order to
   the client afterwards, the chunks say when the first pixel rectangle's
   header arrived (``first rect``: the server has encoded something) and
   when the byte that completed the update arrived (``last byte``);
2. the decoding connection, asking the same way, decodes every chunk as it
   arrives, as a viewer does: ``decoded`` is the time from the request to
   the update applied to the client's framebuffer, for the first update
   and the refresh.  The decoded screen must show the painted picture
   (exactly, or near enough for JPEG), or the visit fails.

Xvnc answers a non-incremental request from a client that takes
ExtendedDesktopSize with the screen layout alone; the client then asks
incrementally, as TigerVNC's viewer does, and the time runs on from the
first request (see :func:`_pixels_done`).

thinserve hands a fresh connection the desktop only once the previous
connection's lease is gone; a connection that ServerInit shows to be on
another screen (its desktop name differs) is closed and made again.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from protocols.rfb.client import ClientConnection, UpdateDone
from protocols.rfb.constants import SecurityType
from protocols.rfb.encodings import Rect

from .peer import (
    CAPTURE_TIMEOUT,
    QUIET_SECONDS,
    Chunk,
    handshake,
    queued_bytes,
    receive_chunk,
    timestamped_socket,
)
from .terminal import ZRLE, Profile
from .workloads import channel_difference

SCREEN_TRIES = 40  # connections made until one shows the desktop
SCREEN_RETRY = 0.25  # seconds between them
STRIP_TRIES = 3  # requests for a strip (an answer may be the screen layout alone)
SHOWS_LIMIT = 3.0  # mean channel difference under which the decoded screen is the picture


class CaptureError(RuntimeError):
    pass


class CountingConnection(ClientConnection):
    """The client, counting the pixel rectangles whose header it has read."""

    def __init__(self) -> None:
        super().__init__(methods=(SecurityType.NONE,))
        self.rects_begun = 0

    def _read_rect(self, rect: Rect, encoding: int) -> Generator[int, bytes, None]:
        self.rects_begun += 1
        yield from super()._read_rect(rect, encoding)


@dataclass(frozen=True)
class Timed:
    """One update on the timing connection."""

    first_rect: float  # seconds from the request to the first pixel rectangle's header
    last_byte: float  # seconds from the request to the update's last byte
    bytes: int  # of the update message (and anything the server sent before it)
    hindered: bool  # bytes waited in the socket past half its buffer: the server may have waited


@dataclass(frozen=True)
class Sample:
    """One update measured on both connections."""

    first_rect: float
    last_byte: float
    decoded: float
    bytes: int
    hindered: bool


@dataclass(frozen=True)
class Visit:
    fresh: Sample  # the first update of a new connection
    refresh: Sample  # a second full update on the same connection


def open_session(
    port: int, name: str, profile: Profile
) -> tuple[socket.socket, CountingConnection]:
    """A connection past ServerInit that shows the desktop ``name``, encodings set."""
    for _ in range(SCREEN_TRIES):
        sock = timestamped_socket(port)
        conn = CountingConnection()
        try:
            handshake(sock, conn)
        except BaseException:
            sock.close()
            raise
        if conn.name == name:
            conn.set_encodings(profile.encodings)
            return sock, conn
        sock.close()
        time.sleep(SCREEN_RETRY)
    raise CaptureError(f"port {port} did not show the desktop {name!r} (last: {conn.name!r})")


def _send_request(sock: socket.socket, conn: ClientConnection, incremental: bool = False) -> None:
    conn.request_update(incremental=incremental)
    sock.sendall(conn.data_to_send())


def _pixels_done(sock: socket.socket, conn: ClientConnection, events: list[object]) -> bool:
    """Whether ``events`` end the update with pixels.

    Xvnc answers every non-incremental request from a client that takes
    ExtendedDesktopSize with the screen layout alone (and a new connection's
    cursor), and keeps the screen marked as changed; TigerVNC's viewer then
    asks incrementally and gets the pixels.  So does this client.
    """
    for event in events:
        if isinstance(event, UpdateDone):
            if event.rects:
                return True
            _send_request(sock, conn, incremental=True)
    return False


def timed_update(sock: socket.socket, conn: CountingConnection) -> Timed:
    """Ask for the whole screen; time its arrival without decoding while it comes.

    Until the first pixel rectangle's header, chunks are fed at once (they are
    small: pseudo-rectangles), so an update without pixels gets its new
    request at once; from then on only when the socket is quiet.
    """
    conn.rects_begun = 0
    started = time.time_ns()
    _send_request(sock, conn)
    deadline = time.monotonic() + CAPTURE_TIMEOUT
    pending: list[Chunk] = []
    first: Chunk | None = None
    fed = backlog = 0
    buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    while time.monotonic() < deadline:
        sock.settimeout(QUIET_SECONDS if first is not None else CAPTURE_TIMEOUT)
        try:
            pending.append(receive_chunk(sock))
            if first is not None:
                continue
        except TimeoutError:
            pass
        for chunk in pending:
            events = conn.receive_data(chunk.data)
            fed += len(chunk.data)
            if first is None and conn.rects_begun:
                first = chunk
            if _pixels_done(sock, conn, events):
                assert first is not None
                return Timed(
                    (first.arrived_ns - started) / 1e9,
                    (chunk.arrived_ns - started) / 1e9,
                    fed,
                    backlog > buffer // 2,
                )
        pending.clear()
        backlog = max(backlog, queued_bytes(sock))  # what came in while decoding
    raise CaptureError(f"no complete update within {CAPTURE_TIMEOUT:.0f} s")


def decoded_update(sock: socket.socket, conn: ClientConnection) -> float:
    """Ask for the whole screen; seconds until it is decoded, decoding as it comes."""
    sock.settimeout(CAPTURE_TIMEOUT)
    started = time.perf_counter()
    _send_request(sock, conn)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise CaptureError("the server closed the connection")
        if _pixels_done(sock, conn, conn.receive_data(data)):
            return time.perf_counter() - started


def shows(conn: ClientConnection, frame: np.ndarray) -> bool:
    fb = conn.framebuffer
    return fb.shape == frame.shape and channel_difference(fb[::4], frame[::4]) < SHOWS_LIMIT


def visit(port: int, name: str, profile: Profile, new_picture: Callable[[], np.ndarray]) -> Visit:
    """Both connections to one server: the fresh update and the refresh on each.

    ``new_picture()`` is called before each connection: it puts a picture on
    the desktop that no terminal has been sent yet and returns it.
    """
    new_picture()
    sock, conn = open_session(port, name, profile)
    with contextlib.closing(sock):
        timed = (timed_update(sock, conn), timed_update(sock, conn))
    frame = new_picture()
    sock, conn = open_session(port, name, profile)
    with contextlib.closing(sock):
        decoded = (decoded_update(sock, conn), decoded_update(sock, conn))
        if not shows(conn, frame):
            raise CaptureError(f"port {port} sent a screen that is not the picture painted")
    fresh, refresh = (
        Sample(t.first_rect, t.last_byte, d, t.bytes, t.hindered)
        for t, d in zip(timed, decoded, strict=True)
    )
    return Visit(fresh, refresh)


def strip_shows(port: int, name: str, frame: np.ndarray, strip: Rect) -> bool:
    """Whether the screen on ``port`` shows ``frame`` in ``strip``, asking for that
    strip alone (ZRLE, lossless), so no full-screen update is made to find out."""
    sock, conn = open_session(port, name, ZRLE)
    with contextlib.closing(sock):
        sock.settimeout(CAPTURE_TIMEOUT)
        for attempt in range(STRIP_TRIES):
            conn.request_update(incremental=attempt > 0, rect=strip)
            sock.sendall(conn.data_to_send())
            done = None
            while done is None:
                data = sock.recv(1 << 20)
                if not data:
                    raise CaptureError("the server closed the connection")
                done = next((e for e in conn.receive_data(data) if isinstance(e, UpdateDone)), None)
            if done.rects:
                y, x = strip.y, strip.x
                window = (slice(y, y + strip.h), slice(x, x + strip.w))
                return bool(np.array_equal(conn.framebuffer[window], frame[window]))
    raise CaptureError(f"port {port} sent no pixels for a {strip.w}x{strip.h} strip")
