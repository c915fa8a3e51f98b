"""What the kernel knows about a TCP connection (Linux ``TCP_INFO``).

The kernel counts, for each connection, the bytes the peer acknowledged and
how long the connection was busy sending, split by what held it back: the
network (the congestion window: data waiting in the network), the
receiver's window (a peer that does not read fast enough) or the sender's
own buffer.  That tells a slow link from a slow terminal, which timing
requests and answers cannot: both make answers late.

``struct tcp_info`` grew over the years; the fields read here sit at fixed
offsets since Linux 2.6 (the first 104 bytes) and 4.1 to 4.19 (the rest).
A shorter struct from an older kernel leaves the newer fields ``None``.
Only Linux has ``TCP_INFO`` in this form: elsewhere, and for sockets that
are not TCP (a Unix socket), ``read`` answers ``None``.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple

TCP_INFO = 11  # the socket option's number on Linux (include/uapi/linux/tcp.h)
ASKED_BYTES = 192  # asked of the kernel: enough for every field read here
BASE_BYTES = 104  # struct tcp_info of Linux 2.6 (up to tcpi_total_retrans)
MAX_HOPS = 8  # transports wrapped in transports (WebSocket over TLS over TCP) followed
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# The fields read, in host byte order, each group at its offset: those of
# Linux 2.6, then the later ones by the kernel that added them.
_BASE = struct.Struct("=16xI8xI")  # 16 snd_mss, 28 sacked (segments SACKed)
_ACKED = (120, struct.Struct("=Q"))  # Linux 4.1: bytes_acked
# 4.10: microseconds with data to send or in flight, and of them limited by
# the receiver's window or by the sender's buffer
_LIMITS = (168, struct.Struct("=QQQ"))


class TcpInfoError(ValueError):
    """A TCP_INFO answer too short to be one."""


class TcpInfo(NamedTuple):
    """The fields of one TCP_INFO answer that measure a link; times in seconds.

    Counters (``bytes_acked``, ``busy`` and the limited times) only grow
    over a connection's life: the difference of two answers is what
    happened between them.  ``None``: the kernel is too old to say.
    """

    snd_mss: int
    sacked: int
    bytes_acked: int | None = None
    busy: float | None = None
    rwnd_limited: float | None = None
    sndbuf_limited: float | None = None

    @property
    def delivered(self) -> int | None:
        """Bytes the peer acknowledged: cumulatively, or selectively (SACK, as
        whole segments) while an earlier one is being sent again."""
        if self.bytes_acked is None:
            return None
        return self.bytes_acked + self.sacked * self.snd_mss

    @property
    def times_limits(self) -> bool:
        """Whether it says what held the sending back (Linux 4.10 and later)."""
        return self.bytes_acked is not None and self.busy is not None


def parse(raw: bytes) -> TcpInfo:
    """The fields of a ``struct tcp_info`` the kernel returned (``raw``)."""
    if len(raw) < BASE_BYTES:
        raise TcpInfoError(
            f"TCP_INFO answer of {len(raw)} bytes, under the {BASE_BYTES} of any Linux "
            "since 2.6: not a Linux tcp_info; the link is timed by the terminal's answers instead"
        )
    snd_mss, sacked = _BASE.unpack_from(raw)
    acked = _field(raw, *_ACKED)
    limits = _field(raw, *_LIMITS)
    if acked is None:
        return TcpInfo(snd_mss, sacked)
    if limits is None:
        return TcpInfo(snd_mss, sacked, acked[0])
    busy, rwnd, sndbuf = limits
    return TcpInfo(snd_mss, sacked, acked[0], busy / 1e6, rwnd / 1e6, sndbuf / 1e6)


def _field(raw: bytes, offset: int, layout: struct.Struct) -> tuple[int, ...] | None:
    """The values at ``offset``, or None if an older kernel's struct ends before."""
    if offset + layout.size > len(raw):
        return None
    return layout.unpack_from(raw, offset)


def read(sock: socket.socket) -> TcpInfo | None:
    """TCP_INFO of ``sock`` now; None off Linux, for a socket that is not
    TCP, once it is closed, or if the kernel's answer cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if sock.family not in TCP_FAMILIES or sock.type != socket.SOCK_STREAM:
            return None
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, ASKED_BYTES)
        return parse(raw)
    except (OSError, TcpInfoError):
        return None


def socket_of(transport: object) -> socket.socket | None:
    """The socket under a Twisted transport, or None.

    A TCP transport's ``getHandle()`` is its socket; once it started TLS
    (VeNCrypt) its handle is the OpenSSL connection and the socket stays
    its ``socket``.  TLS wrapped as a protocol (``TLSMemoryBIOProtocol``)
    and a browser terminal's WebSocket carry the transport they run on as
    ``transport``: followed down to the socket.
    """
    for _ in range(MAX_HOPS):
        if transport is None:
            return None
        handle = _handle(transport)
        if isinstance(handle, socket.socket):
            return handle
        own = getattr(transport, "socket", None)
        if isinstance(own, socket.socket):
            return own
        transport = getattr(transport, "transport", None)
    return None


def _handle(transport: object) -> object:
    get_handle = getattr(transport, "getHandle", None)
    if not callable(get_handle):
        return None
    try:
        return get_handle()
    except (AttributeError, OSError):  # no connection behind it (any more)
        return None


def info_of(transport: object) -> TcpInfo | None:
    """TCP_INFO of the socket under ``transport`` now, or None (see ``read``)."""
    sock = socket_of(transport)
    return None if sock is None else read(sock)
