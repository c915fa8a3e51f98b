"""When a terminal stops reading: is the server's side stalled for good?

Twisted pauses a producer as soon as more than its buffer size waits to be
written, and resumes it once the kernel has taken those bytes, so
``paused`` flickers while the kernel still has room.  It stays paused only
once the socket is full: then the kernel takes nothing more until the peer
reads, and nothing goes out however long a test waits.
"""

from __future__ import annotations

import select
import socket


def socket_of(transport: object) -> socket.socket:
    """The socket under a TCP transport (Twisted's ``getHandle``), or under the
    layers wrapped around one (a WebSocket's framing)."""
    while not hasattr(transport, "getHandle") and hasattr(transport, "transport"):
        transport = getattr(transport, "transport", None)
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{transport!r} is not a TCP transport")
    return sock


def socket_full(transport: object) -> bool:
    """The kernel takes no more bytes on ``transport``'s socket for now (not writable)."""
    _, writable, _ = select.select([], [socket_of(transport)], [], 0)
    return not writable


def stalled(paused: bool, transport: object) -> bool:
    """A producer is paused behind a full socket: it stays so until the peer reads."""
    return paused and socket_full(transport)


def fix_socket_buffers(client: object, server: object, size: int = 1 << 16) -> None:
    """Stop the kernel from growing both sockets' buffers while the test runs
    (Linux autotunes them, on loopback up to tens of MB): once full, they stay
    full, as on a real link to a stalled terminal."""
    socket_of(client).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    socket_of(server).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
